"""Versioned reads and writes over the ordered engine (DVID's rule).

Reading key K at node V: scan every stored version of K (they are adjacent
because the version is a key suffix), keep those that are ancestors of V (V
included), and of those keep the *nearest*: the ones that are not an ancestor
of another candidate.  One candidate: its value, or "deleted" if it is a
tombstone.  Several (only possible below a merge): equal values are fine,
different values are a `ConflictError`.  The cost grows with the number of
versions *of K*, never with the depth of the DAG, because ancestor sets are
precomputed per version (`Ancestry`).

A write at version v puts the data key and removes a tombstone at v; a delete
removes the data key at v and writes an empty tombstone.  Ancestors' copies
stay.  Every write also records (v, instance, TKey) in the change index, which
is what merge uses to find conflicting keys.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol

from dvidfs.errors import ConflictError
from dvidfs.store import keys
from dvidfs.store.engine import Batch, Reader


class Ancestry(Protocol):
    def ancestors(self, version: int) -> frozenset[int]:
        """Every ancestor of `version`, `version` itself included."""


@dataclass(frozen=True)
class VersionView:
    """Where a read happens: a version and the DAG that says who its ancestors are."""

    version: int
    ancestry: Ancestry

    @property
    def visible(self) -> frozenset[int]:
        return self.ancestry.ancestors(self.version)


_DELETED = object()


def _resolve_entry(entries: list[tuple[int, bool, bytes]], view: VersionView,
                   what: bytes, load=None) -> tuple[int, bool, bytes] | None:
    """The nearest-ancestor (version, tombstone, value) entry, or None.
    `load(version)` supplies values left out of `entries` (None) when several
    candidates must be compared."""
    visible = view.visible
    if len(entries) == 1:  # the common case: one stored version
        return entries[0] if entries[0][0] in visible else None
    cands = [e for e in entries if e[0] in visible]
    if not cands:
        return None
    if len(cands) > 1:
        anc = view.ancestry.ancestors
        cands = [c for c in cands
                 if not any(o[0] != c[0] and c[0] in anc(o[0]) for o in cands)]
        if len(cands) > 1:
            if load is not None:
                cands = [(ver, t, load(ver) if v is None and not t else v) for ver, t, v in cands]
            vals = {None if t else v for _, t, v in cands}
            if len(vals) > 1:
                raise ConflictError(
                    f"key {what.hex()} has different values on different parent paths "
                    f"(versions {sorted(c[0] for c in cands)}); resolve the merge first")
    return cands[0]


def _resolve(entries: list[tuple[int, bool, bytes]], view: VersionView, what: bytes) -> bytes | None:
    e = _resolve_entry(entries, view, what)
    return None if e is None or e[1] else e[2]


def get_versioned(reader: Reader, instance_id: int, tk: bytes,
                  view: VersionView) -> tuple[int, bytes] | None:
    """(version that stored it, value) of (instance, TKey) seen from `view`, or None."""
    start = keys.data_key(instance_id, tk, 0)[:-keys.SUFFIX_LEN]
    entries = []
    for k, v in reader.scan(start, start + b"\xff" * keys.SUFFIX_LEN + b"\xff"):
        if len(k) - len(start) != keys.SUFFIX_LEN:
            continue  # a longer TKey that merely starts with ours
        _, _, version, tomb = keys.split_data_key(k)
        entries.append((version, tomb, v))
    e = _resolve_entry(entries, view, tk) if entries else None
    return None if e is None or e[1] else (e[0], e[2])


def get(reader: Reader, instance_id: int, tk: bytes, view: VersionView) -> bytes | None:
    """Value of (instance, TKey) as seen from `view`, or None if absent/deleted."""
    e = get_versioned(reader, instance_id, tk, view)
    return None if e is None else e[1]


def scan_versions(reader: Reader, instance_id: int, tk_lo: bytes, tk_hi: bytes, view: VersionView,
                  want=True) -> Iterator[tuple[bytes, int, bytes | None]]:
    """(TKey, version that stored it, value) for every live key with
    tk_lo <= TKey <= tk_hi, in byte order, resolved at `view`.  The version
    lets callers cache decoded values: (TKey, version) names one immutable
    value once that version is committed.  Meant for fixed-length TKeys.

    A value is copied out of LevelDB only if `want` (a bool, or a function of
    TKey and version, e.g. "the decoded block is not cached") says so;
    otherwise it comes back as None."""
    return scan_ranges(reader, instance_id, [(tk_lo, tk_hi)], view, want)


def scan_ranges(reader: Reader, instance_id: int, ranges, view: VersionView,
                want=True) -> Iterator[tuple[bytes, int, bytes | None]]:
    """`scan_versions` over several [tk_lo, tk_hi] ranges, in the order given,
    with one cursor.  This is the hot loop of every slice (1,024 blocks, and
    for a yz slice 1,024 ranges), so it is written flat: the common case of a
    key with one stored version costs a handful of operations."""
    prefix = keys.instance_prefix(instance_id)
    plen, slen = len(prefix), keys.SUFFIX_LEN
    tomb_mark = keys.MARK_TOMBSTONE
    visible = view.visible
    wanted = want if callable(want) else None
    fetch_all = bool(want)

    def resolved(entries, tk):
        e = _resolve_entry(entries, view, tk,
                           lambda ver: reader.get(keys.data_key(instance_id, tk, ver)))
        return e if e is not None and not e[1] else None

    with reader.cursor() as it:
        key, value, advance, valid = it.key, it.value, it.next, it.valid
        plan = getattr(it, "plan", None)
        if plan is not None:  # a remote engine (S3) fetches the values of these ranges ahead, in parallel
            ranges = list(ranges)
            plan([(prefix + lo, prefix + hi + b"\xff" * (slen + 1)) for lo, hi in ranges])
        for tk_lo, tk_hi in ranges:
            stop = prefix + tk_hi + b"\xff" * (slen + 1)
            it.seek(prefix + tk_lo)
            cur_tk = None
            entries: list = []
            while valid():
                k = key()
                if k >= stop:
                    break
                tk = k[plen:-slen]
                version = int.from_bytes(k[-slen:4 - slen], "big")  # version u32 | client | marker
                tomb = k[-1] == tomb_mark
                if tk != cur_tk:
                    if entries:
                        if len(entries) == 1:
                            e = entries[0]
                            if e[0] in visible and not e[1]:
                                yield cur_tk, e[0], e[2]
                        else:
                            e = resolved(entries, cur_tk)
                            if e is not None:
                                yield cur_tk, e[0], e[2]
                    cur_tk, entries = tk, []
                if tomb or not (wanted(tk, version) if wanted else fetch_all):
                    entries.append((version, tomb, None))
                else:
                    entries.append((version, False, value()))
                advance()
            if entries:
                e = entries[0] if len(entries) == 1 else resolved(entries, cur_tk)
                if e is not None and e[0] in visible and not e[1]:
                    yield cur_tk, e[0], e[2]


def scan(reader: Reader, instance_id: int, tk_lo: bytes, tk_hi: bytes,
         view: VersionView, include_value: bool = True) -> Iterator[tuple[bytes, bytes | None]]:
    """(TKey, value) for every live key in [tk_lo, tk_hi], resolved at `view`
    (values None with include_value=False)."""
    for tk, _, value in scan_versions(reader, instance_id, tk_lo, tk_hi, view, include_value):
        yield tk, value


def put(batch: Batch, instance_id: int, tk: bytes, version: int, value: bytes,
        tombstones_possible: bool = True) -> None:
    """Write a value at `version` (removing a tombstone there, unless the caller
    checked `has_tombstones` and knows there is none: bulk writes skip a third
    of their batch operations that way)."""
    batch.put(keys.data_key(instance_id, tk, version), value)
    if tombstones_possible:
        batch.delete(keys.data_key(instance_id, tk, version, tombstone=True))
    batch.put(keys.change_key(version, instance_id, tk), b"")


def delete(batch: Batch, instance_id: int, tk: bytes, version: int) -> None:
    batch.delete(keys.data_key(instance_id, tk, version))
    batch.put(keys.data_key(instance_id, tk, version, tombstone=True), b"")
    batch.put(keys.change_key(version, instance_id, tk), b"")
    batch.put(keys.tombstoned_key(instance_id, version), b"")


def has_tombstones(reader: Reader, instance_id: int, version: int) -> bool:
    """Whether anything of this instance was ever deleted at this version."""
    return reader.get(keys.tombstoned_key(instance_id, version)) is not None


def version_changed(reader: Reader, instance_id: int, version: int) -> bool:
    """Whether `version` wrote or deleted any key of the instance (change index)."""
    p = keys.change_prefix(version) + keys.u32(instance_id)
    for _ in reader.scan(p, keys.prefix_end(p), include_value=False):
        return True
    return False


def changed_keys(reader: Reader, version: int) -> Iterator[tuple[int, bytes]]:
    """(instance id, TKey) of every key written or deleted at `version`."""
    p = keys.change_prefix(version)
    for k in reader.scan(p, keys.prefix_end(p), include_value=False):
        _, inst, tk = keys.split_change_key(k)
        yield inst, tk
