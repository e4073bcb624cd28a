"""Open the engine a store path names.

    /path/to/store                                  LevelDB in <path>/leveldb (dvidfs/store/leveldb.py)
    s3://bucket[/prefix][?endpoint=URL&…]           an S3 object store (dvidfs/store/s3.py)

S3 URL parameters (all optional):

    endpoint=http://127.0.0.1:8333   the S3 server (else AWS, or AWS_ENDPOINT_URL(_S3) if set)
    region=us-east-1                 else AWS_REGION / AWS_DEFAULT_REGION, else us-east-1
    readonly=1                       open as a reader: no writer lease, follows the writer's commits
    cache=256M                       fetched values kept in memory (K/M/G suffixes)
    inline=4K                        values smaller than this live in the log, not in their own objects
    localcache=/var/cache/dvidfs     also keep fetched values in files there (they never change), for
                                     later processes on this machine; else $DVIDFS_S3_LOCAL_CACHE if set
    localcachesize=4G                at most about this much in that directory (least recently used go)

Credentials come from the usual AWS variables (AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY) or profile, never from the URL (it is shown in
messages and process lists).  `create` makes the bucket if it is missing
(`dvidfs init s3://…`).  The S3 driver (and boto3) is imported only when an
S3 path is opened.
"""
from __future__ import annotations

import os
from urllib.parse import parse_qsl, urlsplit

from dvidfs.config import Config, parse_bytes
from dvidfs.errors import InvalidInputError
from dvidfs.store.engine import OrderedKV

SCHEMES = ("s3://",)
_PARAMS = {"endpoint", "region", "readonly", "cache", "inline", "localcache", "localcachesize"}


def is_remote(path) -> bool:
    """Whether `path` names an object store rather than a local directory."""
    return isinstance(path, str) and path.lower().startswith(SCHEMES)


def parse_s3_url(url: str) -> dict:
    """S3Engine keyword arguments of an s3:// URL (see the module docstring)."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "s3" or not parts.netloc:
        raise InvalidInputError(f"{url!r} is not s3://bucket[/prefix][?endpoint=…]")
    if "@" in parts.netloc:
        raise InvalidInputError(f"{url!r}: credentials do not belong in the URL: set AWS_ACCESS_KEY_ID "
                                f"and AWS_SECRET_ACCESS_KEY")
    kw: dict = {"bucket": parts.netloc, "prefix": parts.path.strip("/")}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name not in _PARAMS:
            raise InvalidInputError(f"{url!r}: unknown parameter {name!r} "
                                    f"(known: {', '.join(sorted(_PARAMS))})")
        if name == "endpoint":
            if not value.startswith(("http://", "https://")):
                raise InvalidInputError(f"{url!r}: endpoint must be an http:// or https:// URL")
            kw["endpoint"] = value
        elif name == "region":
            kw["region"] = value
        elif name == "readonly":
            kw["readonly"] = value.lower() in ("", "1", "true", "yes")
        elif name == "cache":
            kw["cache_bytes"] = parse_bytes(value)
        elif name == "inline":
            kw["inline_max"] = max(1, parse_bytes(value))
        elif name == "localcache":
            kw["local_cache"] = value
        elif name == "localcachesize":
            kw["local_cache_bytes"] = parse_bytes(value)
    return kw


def open_engine(path: str | os.PathLike, create: bool = False, config: Config | None = None) -> OrderedKV:
    """The engine of the store at `path` (a directory or an s3:// URL)."""
    if is_remote(path):
        from dvidfs.store.s3 import S3Engine
        kw = parse_s3_url(path)
        if "local_cache" not in kw and os.environ.get("DVIDFS_S3_LOCAL_CACHE"):
            kw["local_cache"] = os.environ["DVIDFS_S3_LOCAL_CACHE"]
        return S3Engine(kw.pop("bucket"), kw.pop("prefix"), create=create, **kw)
    from dvidfs.store.leveldb import LevelDBEngine
    c = config or Config.load()
    return LevelDBEngine(path, create=create, write_buffer_size=c.leveldb_write_buffer,
                         block_size=c.leveldb_block_size, lru_cache_size=c.leveldb_cache)
