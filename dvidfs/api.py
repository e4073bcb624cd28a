"""`DvidStore`: the one object the CLI and the filesystem use.

It bundles the engine, the version DAG and the data types, so callers deal in
nodes, instances and numpy arrays, never in keys.
"""
from __future__ import annotations

import os

from dvidfs.data.grayscale import Grayscale
from dvidfs.data.labels import Labels
from dvidfs.data.volume import BlockVolume
from dvidfs.errors import InvalidInputError, NotFoundError
from dvidfs.store.cache import LRUCache
from dvidfs.store.engine import Engine
from dvidfs.versions.dag import VersionDB
from dvidfs.versions.model import Node

TYPES: dict[str, type[BlockVolume]] = {"grayscale": Grayscale, "labels": Labels}


class DvidStore:
    def __init__(self, path: str | os.PathLike, create: bool = False, block_cache_bytes: int = 256 << 20):
        self.path = os.fspath(path)
        self.engine = Engine(self.path, create=create)
        self.db = VersionDB(self.engine)
        self._instances: dict[int, BlockVolume] = {}
        # decoded blocks of every instance: scrolling through slices reuses them
        self.block_cache = LRUCache(block_cache_bytes) if block_cache_bytes else None

    @classmethod
    def init(cls, path: str | os.PathLike) -> "DvidStore":
        return cls(path, create=True)

    def close(self) -> None:
        self.engine.close()

    def __enter__(self) -> "DvidStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # convenience pass-throughs
    def node(self, ref: str) -> Node:
        return self.db.node(ref)

    def new_instance(self, node: Node, name: str, typename: str, **config) -> BlockVolume:
        cls = TYPES.get(typename)
        if cls is None:
            raise InvalidInputError(f"unknown data type {typename!r} (known: {', '.join(sorted(TYPES))})")
        self.db.new_instance(node, name, typename, cls.make_config(**config))
        return self.data(node, name)

    def data(self, node: Node, name: str) -> BlockVolume:
        """The data instance `name` as visible from `node`."""
        inst = self.db.instances_at(node).get(name)
        if inst is None:
            raise NotFoundError(f"no data instance {name!r} at node {node.uuid}")
        vol = self._instances.get(inst.id)
        if vol is None:
            vol = self._instances[inst.id] = TYPES[inst.typename](self.db, inst, self.block_cache)
        return vol
