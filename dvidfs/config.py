"""Every tunable of dvidfs in one place: a dataclass with documented defaults.

Where a value comes from, lowest priority first: the default here, an
environment variable `DVIDFS_<FIELD>` (an override for scripts and tests that
cannot pass flags, e.g. `DVIDFS_RENDER_THREADS=2`), then an explicit value (a
command-line flag of `dvidfs`: `--render-threads 2`, `--block-cache 512M`).
Byte sizes take K/M/G suffixes (powers of 1024).  `docs/design.md` lists
what each one trades; `scripts/bench` measured the defaults.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field, fields
from typing import Mapping

from dvidfs.errors import InvalidInputError

_SUFFIX = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_bytes(text: str) -> int:
    """'256M' -> 268435456; plain numbers are bytes."""
    t = str(text).strip().upper().removesuffix("B").removesuffix("I")
    unit = t[-1:] if t[-1:] in _SUFFIX else ""
    try:
        n = float(t[:-1] if unit else t) * _SUFFIX[unit]
    except ValueError:
        raise InvalidInputError(f"{text!r} is not a size (bytes, or a number with K, M or G)") from None
    if n < 0:
        raise InvalidInputError(f"size {text!r} must not be negative")
    return int(n)


def _opt(default, help: str, kind: str = "int"):
    return field(default=default, metadata={"help": help, "kind": kind})


@dataclass(frozen=True)
class Config:
    """Cache budgets, read-ahead, render threads and LevelDB options."""

    block_cache: int = _opt(256 << 20, "decoded blocks kept for reuse (label slices, bodies, writes)", "bytes")
    render_cache: int = _opt(256 << 20, "rendered files of open nodes kept by the mount", "bytes")
    readahead: int = _opt(192 << 20, "read-ahead layers for scrolling through slices (0: off)", "bytes")
    render_threads: int = _opt(1, "mount worker threads that render slices (renders hold the GIL: "
                                  "one is fastest, docs/performance.md)")
    switch_interval: float = _opt(0.0005, "mount's GIL switch interval in seconds, so FUSE requests "
                                          "are not stuck behind a render", "float")
    leveldb_write_buffer: int = _opt(64 << 20, "LevelDB write buffer (memtable) size", "bytes")
    leveldb_block_size: int = _opt(64 << 10, "LevelDB table block size", "bytes")
    leveldb_cache: int = _opt(64 << 20, "LevelDB block cache", "bytes")
    body_listing: int = _opt(1000, "bodies a labels/ directory (and each @more page) lists; every body "
                                    "id resolves whether listed or not")
    http_threads: int = _opt(8, "`dvidfs serve` worker threads answering requests at once")
    http_max_body: int = _opt(1 << 30, "largest request body `dvidfs serve` accepts (bigger: 413)", "bytes")
    http_max_reply: int = _opt(1 << 30, "largest voxel reply `dvidfs serve` assembles (bigger: 400)", "bytes")

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None, **explicit) -> "Config":
        """Defaults, overridden by DVIDFS_<FIELD> variables, overridden by
        `explicit` values (None means "not given")."""
        env = os.environ if env is None else env
        values = {}
        for f in fields(cls):
            raw = env.get("DVIDFS_" + f.name.upper())
            if raw is not None and raw != "":
                values[f.name] = _parse(f, raw)
            if explicit.get(f.name) is not None:
                values[f.name] = explicit[f.name]
        unknown = set(explicit) - {f.name for f in fields(cls)}
        if unknown:
            raise InvalidInputError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        cfg = cls(**values)
        cfg.check()
        return cfg

    def check(self) -> None:
        if self.render_threads < 1:
            raise InvalidInputError("render threads must be at least 1")
        if self.http_threads < 1:
            raise InvalidInputError("http threads must be at least 1")
        if self.body_listing < 1:
            raise InvalidInputError("body listing must be at least 1")
        if not 0 < self.switch_interval <= 1:
            raise InvalidInputError("switch interval must be between 0 and 1 second")

    # -- command line --
    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """One flag per field (`--block-cache 512M`, `--render-threads 2`)."""
        group = parser.add_argument_group("tuning (defaults, or DVIDFS_<NAME> environment variables)")
        for f in fields(cls):
            kind = f.metadata["kind"]
            group.add_argument("--" + f.name.replace("_", "-"), dest="cfg_" + f.name, default=None,
                               type={"bytes": _arg_bytes, "int": int, "float": float}[kind],
                               metavar="SIZE" if kind == "bytes" else "N",
                               help=f"{f.metadata['help']} (default {_show(f.default, kind)})")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Config":
        return cls.load(**{f.name: getattr(args, "cfg_" + f.name, None) for f in fields(cls)})

    def to_args(self) -> list[str]:
        """Flags that reproduce this configuration (for the background mount's child)."""
        out = []
        for f in fields(self):
            out += ["--" + f.name.replace("_", "-"), str(getattr(self, f.name))]
        return out


def _parse(f, raw: str):
    kind = f.metadata["kind"]
    try:
        return parse_bytes(raw) if kind == "bytes" else (float(raw) if kind == "float" else int(raw))
    except ValueError:
        raise InvalidInputError(f"DVIDFS_{f.name.upper()}={raw!r} is not a number") from None


def _arg_bytes(text: str) -> int:
    try:
        return parse_bytes(text)
    except InvalidInputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _show(value, kind: str) -> str:
    if kind != "bytes":
        return str(value)
    for unit in ("G", "M", "K"):
        if value and value % _SUFFIX[unit] == 0:
            return f"{value // _SUFFIX[unit]}{unit}"
    return str(value)
