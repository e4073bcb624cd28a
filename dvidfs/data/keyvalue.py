"""DVID's `keyvalue` type: versioned values (any bytes) under string keys.

Keys
----
A key is 1..1024 bytes with any byte but NUL and "/": DVID ends every key
with a NUL in its TKey, and a key is one segment of a URL (`…/key/<k>`) and
one file name in the mount.  Keys are given and returned as `str`; bytes that
are not UTF-8 (a file name from the mount) travel as surrogate escapes
(`os.fsdecode`'s convention), so every byte string round-trips.  A bad key is
refused with `InvalidInputError` before anything is written.  Keys sort as
byte strings (a prefix first), which is DVID's order; ranges are inclusive at
both ends, as DVID's `keyrange`.

Storage (TKey class 177, DVID's `keyStandard`)
----------------------------------------------
Every key has one versioned *head*, TKey `177 | key | 0x00` (DVID's layout,
so all versions of a key are adjacent and a range of keys is one scan):

* a value of at most `INLINE_MAX` (4 KiB) is the head itself, in DVID's value
  encoding without compression: `0x00 | bytes`;
* a larger value is stored in `CHUNK` (1 MiB) pieces, and the head is a
  34-byte manifest `0x07 | size u64 | chunk size u32 | blob version u32 |
  blob id (16 random bytes)` (0x07 sets bits DVID's header byte never uses).
  Chunk i lives at TKey `177 | 0x00 | blob id | i u32`, version = the blob's
  version; a key is never empty, so no key's TKey starts with `177 | 0x00`.
  Chunks are plain puts: they are not in the change index, so merges and
  listings only ever see heads.

Why chunks: LevelDB hands out a value whole on every get and rewrites it at
every compaction; with 1 MiB pieces an HTTP `Range` or a `cat` of a 64 MiB mesh
reads only what it returns, at most one chunk at a time, and heads stay small,
so a listing with sizes (`ls -l`, `keys`) reads at most 4 KiB per key.

Blobs: a blob belongs to the version that wrote it, and only one head *of that
version* refers to it (a rename in that version moves the head).  When that
head is replaced or removed in that version, the same batch deletes the
chunks.  Heads in later versions may refer to it too (a rename or a merge in a
child), but by then its version is committed and never changes again, so
those never free it.  Writing a large value stores its chunks in batches of
~8 MiB first, then the head in one atomic batch: readers see the old value or
the new one, never a mix.  (A crash in between leaves chunks no head names:
invisible, and never read.)

Writes hold `VersionDB.lock` (node open?, then the batch), call `_applied` and,
after the lock, `ctx.changed`, as every data type.  Deleting writes a
tombstone when an ancestor still shows the key; a key that exists only in
this version is simply removed, so rsync's temporary files leave nothing behind.

Merges: a key changed on several sides of a merge with different values is a
conflict, named by its key.  Two sides that stored the same bytes (in
different blobs) are not a conflict (`_merge_heads` compares the content).
"""
from __future__ import annotations

import os
import struct
import threading
from contextlib import ExitStack
from typing import Iterable, Iterator

from dvidfs.data.types import DataType
from dvidfs.errors import ConflictError, DvidfsError, ExistsError, InvalidInputError, NotFoundError
from dvidfs.store import keys, versioned
from dvidfs.store.engine import Batch, Reader
from dvidfs.store.values import decode_value
from dvidfs.store.versioned import VersionView
from dvidfs.versions.model import Instance, Node

CLASS = keys.CLASS_KEYVALUE
MAX_KEY = 1024                 # bytes of one key
INLINE_MAX = 4096              # values up to this size are stored in their head
CHUNK = 1 << 20                # the piece size of larger values
WRITE_BATCH = 8 << 20          # chunk bytes per batch while a large value is written

INLINE = 0x00                  # DVID's value header: no compression, no checksum
MANIFEST = 0x07                # low bits DVID's header byte leaves unused
_MANIFEST = struct.Struct(">BQII16s")  # mark, size, chunk size, blob version, blob id
_U32 = struct.Struct(">I")
_LO = bytes((CLASS, 0x01))                        # below every key's TKey (keys are not empty)
_HI = bytes((CLASS,)) + b"\xff" * (MAX_KEY + 2)    # above every key's TKey


# ---------------------------------------------------------------- keys
def key_bytes(key: str | bytes) -> bytes:
    """The stored bytes of a key, or InvalidInputError saying what is wrong."""
    if isinstance(key, str):
        try:
            b = key.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raise InvalidInputError(f"key {key!r} is not valid text") from None
    elif isinstance(key, (bytes, bytearray, memoryview)):
        b = bytes(key)
    else:
        raise InvalidInputError(f"a key is a string, not {type(key).__name__}")
    if not b:
        raise InvalidInputError("a key cannot be empty")
    if len(b) > MAX_KEY:
        raise InvalidInputError(f"key {key_str(b[:40])!r}… is {len(b)} bytes; keys are at most {MAX_KEY}")
    if b"\0" in b:
        raise InvalidInputError(f"key {key_str(b)!r} contains a NUL byte (not allowed in keys)")
    if b"/" in b:
        raise InvalidInputError(f"key {key_str(b)!r} contains '/' (a key is one URL segment and one "
                                "file name)")
    return b


def key_str(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def _tkey(kb: bytes) -> bytes:
    return bytes((CLASS,)) + kb + b"\0"


def _bound(key: str | bytes) -> bytes:
    """A range bound: any text (it need not be a valid key)."""
    try:
        b = key.encode("utf-8", "surrogateescape") if isinstance(key, str) else bytes(key)
    except UnicodeEncodeError:
        raise InvalidInputError(f"range bound {key!r} is not valid text") from None
    return _tkey(b)


def describe_key(tk: bytes, inst: Instance) -> str:
    """A head TKey in the user's terms (merge conflict messages)."""
    if len(tk) > 2 and tk[1] != 0:
        return f"key {key_str(tk[1:-1])!r}"
    return f"chunk of a large value {tk[2:].hex()}"


def summarize_keys(tks: list[bytes], inst: Instance, contexts=(), shown: int = 10) -> list[str]:
    """Conflicting head TKeys: each described when few, else the key names (a
    large value's chunks counted)."""
    if len(tks) <= 5:
        return [describe_key(tk, inst) for tk in tks]
    names = sorted(key_str(tk[1:-1]) for tk in tks if len(tk) > 2 and tk[1] != 0)
    chunks = len(tks) - len(names)
    out = f"keys {', '.join(repr(n) for n in names[:shown])}" if names else ""
    if len(names) > shown:
        out += f", … ({len(names)} keys in all)"
    if chunks:
        out += f"{' and ' if out else ''}{chunks} chunk(s) of large values"
    return [out]


# ---------------------------------------------------------------- heads
class _Manifest:
    __slots__ = ("size", "chunk", "version", "blob")

    def __init__(self, size: int, chunk: int, version: int, blob: bytes):
        self.size, self.chunk, self.version, self.blob = size, chunk, version, blob

    @classmethod
    def parse(cls, head: bytes) -> "_Manifest | None":
        if len(head) != _MANIFEST.size or head[0] != MANIFEST:
            return None
        _, size, chunk, version, blob = _MANIFEST.unpack(head)
        return cls(size, chunk, version, blob)

    def encode(self) -> bytes:
        return _MANIFEST.pack(MANIFEST, self.size, self.chunk, self.version, self.blob)

    @property
    def nchunks(self) -> int:
        return -(-self.size // self.chunk)

    def chunk_key(self, instance_id: int, i: int) -> bytes:
        return keys.data_key(instance_id, bytes((CLASS, 0)) + self.blob + _U32.pack(i), self.version)


def _inline_value(head: bytes) -> bytes:
    if head[:1] == bytes((INLINE,)):
        return head[1:]
    return decode_value(head)  # another DVID encoding (not written by dvidfs)


def _head_size(head: bytes) -> int:
    m = _Manifest.parse(head)
    if m is not None:
        return m.size
    if head[:1] == bytes((INLINE,)):
        return len(head) - 1
    return len(decode_value(head))


def _chunk(reader: Reader, instance_id: int, m: _Manifest, i: int) -> bytes:
    v = reader.get(m.chunk_key(instance_id, i))
    want = min(m.chunk, m.size - i * m.chunk)
    if v is None or len(v) != want:
        raise DvidfsError(f"a stored value is damaged: piece {i} of {m.nchunks} is "
                          f"{'missing' if v is None else f'{len(v)} bytes, expected {want}'}")
    return v


def _whole(reader: Reader, instance_id: int, head: bytes) -> bytes:
    m = _Manifest.parse(head)
    if m is None:
        return _inline_value(head)
    out = bytearray(m.size)
    for i in range(m.nchunks):
        out[i * m.chunk:(i + 1) * m.chunk] = _chunk(reader, instance_id, m, i)
    return bytes(out)


def _pieces(reader: Reader, instance_id: int, head: bytes) -> Iterator[bytes]:
    m = _Manifest.parse(head)
    if m is None:
        yield _inline_value(head)
        return
    for i in range(m.nchunks):
        yield _chunk(reader, instance_id, m, i)


def _same_value(reader: Reader, instance_id: int, a: bytes | None, b: bytes | None) -> bool:
    """Whether two heads hold the same bytes (None: absent), piece by piece."""
    if a is None or b is None:
        return a is b
    if a == b:
        return True
    if _head_size(a) != _head_size(b):
        return False
    left, right = bytearray(), bytearray()
    pa, pb = _pieces(reader, instance_id, a), _pieces(reader, instance_id, b)
    while True:  # the two may be cut differently (inline, other chunk sizes)
        while len(left) < CHUNK and (p := next(pa, None)) is not None:
            left += p
        while len(right) < len(left) and (p := next(pb, None)) is not None:
            right += p
        n = min(len(left), len(right))
        if n == 0:
            return not left and not right
        if left[:n] != right[:n]:
            return False
        del left[:n], right[:n]


def _merge_heads(ctx) -> bytes | None:
    """A key changed on several sides of a merge: the same bytes everywhere
    (stored apart) merge to one of them; anything else is a conflict."""
    heads = ctx.parent_values()
    for h in heads[1:]:
        if not _same_value(ctx.reader, ctx.instance_id, heads[0], h):
            raise ConflictError("different values")
    return heads[0]


# ---------------------------------------------------------------- reading in pieces
class StoredValue:
    """One value opened for reading: `size`, `read(offset, n)`, `close()`.
    Holds at most one chunk besides what a caller asked for; a value of an open
    version is read from a snapshot taken at open, so a concurrent rewrite
    never mixes into it."""

    def __init__(self, size: int, data: bytes | None = None, reader: Reader | None = None,
                 instance_id: int = 0, manifest: _Manifest | None = None, stack: ExitStack | None = None):
        self.size = size
        self._data, self._reader, self._inst, self._m, self._stack = data, reader, instance_id, manifest, stack
        self._cached: tuple[int, bytes] | None = None
        self._lock = threading.Lock()

    @property
    def in_memory(self) -> bool:
        """The whole value is held already: reads cost nothing."""
        return self._data is not None

    def read(self, offset: int, n: int) -> bytes:
        end = min(self.size, offset + max(n, 0))
        if offset >= end:
            return b""
        if self._data is not None:
            return self._data[offset:end]
        m, parts = self._m, []
        for i in range(offset // m.chunk, (end - 1) // m.chunk + 1):
            c = self._piece(i)
            lo = max(offset - i * m.chunk, 0)
            parts.append(c[lo:end - i * m.chunk])
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _piece(self, i: int) -> bytes:
        with self._lock:
            if self._cached is not None and self._cached[0] == i:
                return self._cached[1]
            if self._reader is None:
                raise DvidfsError("the value was closed")
            c = _chunk(self._reader, self._inst, self._m, i)
            self._cached = (i, c)
            return c

    def close(self) -> None:
        with self._lock:
            self._cached, self._reader = None, None
            stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()


# ---------------------------------------------------------------- the type
class KeyValue(DataType):
    typename = "keyvalue"
    offers = frozenset({"keys"})
    merge_rules = {CLASS: _merge_heads}
    key_descriptions = {CLASS: describe_key}
    key_summaries = {CLASS: summarize_keys}

    @classmethod
    def make_config(cls, **options) -> dict:
        if options:
            raise InvalidInputError(f"keyvalue instances take no settings (got {', '.join(sorted(options))})")
        return {}

    # ------------------------------------------------------------ reading
    def _head(self, reader: Reader, view: VersionView, kb: bytes) -> tuple[int, bytes] | None:
        return versioned.get_versioned(reader, self.inst.id, _tkey(kb), view)

    def exists(self, view: VersionView | Node, key: str) -> bool:
        return self._head(self.engine, self.as_view(view), key_bytes(key)) is not None

    def size(self, view: VersionView | Node, key: str) -> int | None:
        """The value's length in bytes, or None if the key is absent."""
        e = self._head(self.engine, self.as_view(view), key_bytes(key))
        return None if e is None else _head_size(e[1])

    def get(self, view: VersionView | Node, key: str) -> bytes | None:
        """The whole value, or None if the key is absent at this version."""
        view, kb = self.as_view(view), key_bytes(key)
        with self.engine.snapshot() as snap:
            e = self._head(snap, view, kb)
            return None if e is None else _whole(snap, self.inst.id, e[1])

    def read_range(self, view: VersionView | Node, key: str, offset: int, size: int) -> bytes | None:
        """Bytes [offset, offset + size) of the value (fewer at its end), reading
        only the chunks they lie in; None if the key is absent."""
        v = self.open_value(view, key)
        if v is None:
            return None
        try:
            return v.read(offset, size)
        finally:
            v.close()

    def open_value(self, view: VersionView | Node, key: str) -> StoredValue | None:
        """The value for reading in pieces (close it), or None if absent.  Small
        values are read at once; a large value of a committed version is read
        chunk by chunk from the store; one of an open version from a snapshot
        held until `close`."""
        view, kb = self.as_view(view), key_bytes(key)
        stack = ExitStack()
        try:
            snap = stack.enter_context(self.engine.snapshot())
            e = self._head(snap, view, kb)
            if e is None:
                stack.close()
                return None
            version, head = e
            m = _Manifest.parse(head)
            if m is None:
                stack.close()
                data = _inline_value(head)
                return StoredValue(len(data), data)
            node = self.db.by_version.get(version)
            if node is not None and node.locked:  # immutable: no snapshot to hold
                stack.close()
                return StoredValue(m.size, reader=self.engine, instance_id=self.inst.id, manifest=m)
            return StoredValue(m.size, reader=snap, instance_id=self.inst.id, manifest=m, stack=stack)
        except BaseException:
            stack.close()
            raise

    def _range(self, lo, hi) -> tuple[bytes, bytes] | None:
        tk_lo = _LO if lo is None else max(_bound(lo), _LO)
        tk_hi = _HI if hi is None else _bound(hi)
        return None if tk_lo > tk_hi else (tk_lo, tk_hi)

    def keys(self, view: VersionView | Node, lo: str | None = None, hi: str | None = None) -> list[str]:
        """Keys at this version in byte order; with `lo`/`hi`, those with
        lo <= key <= hi (DVID's keyrange)."""
        r = self._range(lo, hi)
        if r is None:
            return []
        return [key_str(tk[1:-1]) for tk, _ in
                versioned.scan(self.engine, self.inst.id, r[0], r[1], self.as_view(view), include_value=False)]

    def sizes(self, view: VersionView | Node, lo: str | None = None,
              hi: str | None = None) -> list[tuple[str, int]]:
        """(key, value size) of every key (in [lo, hi]), in byte order; reads
        heads only (at most INLINE_MAX + 1 bytes each)."""
        r = self._range(lo, hi)
        if r is None:
            return []
        return [(key_str(tk[1:-1]), _head_size(head)) for tk, head in
                versioned.scan(self.engine, self.inst.id, r[0], r[1], self.as_view(view))]

    def items(self, view: VersionView | Node, lo: str | None = None,
              hi: str | None = None) -> Iterator[tuple[str, bytes]]:
        """(key, value) of every key in [lo, hi], in order, from one snapshot."""
        r = self._range(lo, hi)
        if r is None:
            return
        view = self.as_view(view)
        with self.engine.snapshot() as snap:
            for tk, head in versioned.scan(snap, self.inst.id, r[0], r[1], view):
                yield key_str(tk[1:-1]), _whole(snap, self.inst.id, head)

    def get_many(self, view: VersionView | Node, wanted: Iterable[str]) -> list[tuple[str, bytes | None]]:
        """(key, value or None) for each key asked, in the order asked, from one snapshot."""
        view = self.as_view(view)
        asked = [(k, key_bytes(k)) for k in wanted]
        with self.engine.snapshot() as snap:
            out = []
            for k, kb in asked:
                e = self._head(snap, view, kb)
                out.append((k, None if e is None else _whole(snap, self.inst.id, e[1])))
            return out

    # ------------------------------------------------------------ writing
    def put(self, node: Node, key: str, value) -> None:
        """Store `value` (bytes-like, any length incl. 0) under `key` in open `node`."""
        self.put_many(node, [(key, value)])

    def put_many(self, node: Node, items: Iterable[tuple[str, object]]) -> None:
        """Store several values in one atomic change (the last of a repeated key wins).
        Every key is checked before anything is written."""
        staged: dict[bytes, memoryview] = {}
        for k, v in items:
            kb = key_bytes(k)
            try:
                mv = memoryview(v).cast("B")
            except TypeError:
                raise InvalidInputError(f"the value of key {k!r} is not bytes") from None
            staged.pop(kb, None)
            staged[kb] = mv
        if not staged:
            return
        with self.db.lock:
            self.check_writable(node)
            version = node.version_id
            written: list[bytes] = []
            try:
                batch = Batch()
                for kb, mv in staged.items():
                    tk = _tkey(kb)
                    self._free_blob(batch, tk, version)
                    head = bytes((INLINE,)) + mv if len(mv) <= INLINE_MAX else \
                        self._write_chunks(mv, version, written)
                    versioned.put(batch, self.inst.id, tk, version, head)
                self.engine.apply(batch)
            except BaseException:
                self._drop_chunks(written)
                raise
            self._applied(node)
        self.ctx.changed(node, self.inst.name)

    def delete(self, node: Node, key: str) -> bool:
        """Delete `key` in open `node` (a tombstone: ancestors keep their value).
        Returns whether it existed; nothing is written if it did not."""
        kb = key_bytes(key)
        with self.db.lock:
            self.check_writable(node)
            view = self.db.view(node)
            if self._head(self.engine, view, kb) is None:
                return False
            batch = Batch()
            self._free_blob(batch, _tkey(kb), node.version_id)
            self._remove_head(batch, _tkey(kb), view)
            self.engine.apply(batch)
            self._applied(node)
        self.ctx.changed(node, self.inst.name)
        return True

    def rename(self, node: Node, old: str, new: str, replace: bool = True) -> None:
        """Move the value of `old` to `new` in open `node`, in one atomic change
        (a large value's chunks are not copied).  `new` is replaced unless
        `replace` is False (then ExistsError)."""
        ob, nb = key_bytes(old), key_bytes(new)
        with self.db.lock:
            self.check_writable(node)
            view = self.db.view(node)
            e = self._head(self.engine, view, ob)
            if e is None:
                raise NotFoundError(f"no key {old!r}")
            if ob == nb:
                return
            if not replace and self._head(self.engine, view, nb) is not None:
                raise ExistsError(f"key {new!r} exists")
            batch = Batch()
            self._free_blob(batch, _tkey(nb), node.version_id)
            versioned.put(batch, self.inst.id, _tkey(nb), node.version_id, e[1])
            self._remove_head(batch, _tkey(ob), view)  # its blob now belongs to `new`
            self.engine.apply(batch)
            self._applied(node)
        self.ctx.changed(node, self.inst.name)

    # ------------------------------------------------------------ writing: helpers (under the lock)
    def _write_chunks(self, mv: memoryview, version: int, written: list[bytes]) -> bytes:
        """Store a large value's chunks (batches of ~WRITE_BATCH bytes, applied
        before its head); returns the manifest head."""
        m = _Manifest(len(mv), CHUNK, version, os.urandom(16))
        batch, pending = Batch(), 0
        for i in range(m.nchunks):
            k = m.chunk_key(self.inst.id, i)
            batch.put(k, bytes(mv[i * CHUNK:(i + 1) * CHUNK]))
            pending += CHUNK
            if pending >= WRITE_BATCH or i == m.nchunks - 1:
                self.engine.apply(batch)
                written.extend(key for key, _ in batch.ops)
                batch, pending = Batch(), 0
        return m.encode()

    def _drop_chunks(self, written: list[bytes]) -> None:
        """Remove chunks of a write that failed before its head was stored."""
        if not written:
            return
        batch = Batch()
        for k in written:
            batch.delete(k)
        try:
            self.engine.apply(batch)
        except Exception:
            pass  # unreferenced chunks are never read; the original error is what matters

    def _free_blob(self, batch: Batch, tk: bytes, version: int) -> None:
        """The head of `tk` stored at `version` is being replaced or removed: if
        it owns a blob of that version, delete the blob's chunks too."""
        head = self.engine.get(keys.data_key(self.inst.id, tk, version))
        m = _Manifest.parse(head) if head else None
        if m is not None and m.version == version:
            for i in range(m.nchunks):
                batch.delete(m.chunk_key(self.inst.id, i))

    def _remove_head(self, batch: Batch, tk: bytes, view: VersionView) -> None:
        """Remove `tk` at the view's version: a tombstone if an ancestor still
        holds a value for it, else just the entry of this version."""
        version, visible = view.version, view.visible
        start = keys.data_key(self.inst.id, tk, 0)[:-keys.SUFFIX_LEN]
        below = False
        for k in self.engine.scan(start, start + b"\xff" * (keys.SUFFIX_LEN + 1), include_value=False):
            if len(k) - len(start) != keys.SUFFIX_LEN:
                continue
            _, _, v, tomb = keys.split_data_key(k)
            if v != version and v in visible and not tomb:
                below = True
                break
        if below:
            versioned.delete(batch, self.inst.id, tk, version)
        else:
            batch.delete(keys.data_key(self.inst.id, tk, version))
