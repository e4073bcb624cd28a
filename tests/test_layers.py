"""The import graph points down: front ends -> core -> data types ->
versions -> store / formats -> base.  Read from the source with `ast`, so a
new upward import fails here with the offending line named."""
from __future__ import annotations

import ast
import pathlib

import dvidfs

ROOT = pathlib.Path(dvidfs.__file__).parent

# (rank, group): a module may import its own group or any group of lower rank.
# Groups of equal rank are peers and must not import each other.
LAYERS = {
    "base": (0, ("errors", "timestamps", "geometry", "config", "allocator", "storedir", "sample", "dagsvg")),
    "store": (1, ("store",)),
    "formats": (1, ("formats",)),
    "versions": (2, ("versions",)),
    "data": (3, ("data", "transfer")),
    "core": (4, ("core", "samplestore", "push")),
    "frontends": (5, ("fs", "cli", "server")),
}
# Front ends talk to the core: never to an engine, keys, versioned reads or the DAG.
FRONTEND_MAY_NOT = ("store.engine", "store.leveldb", "store.memory", "store.s3", "store.open",
                    "store.keys", "store.versioned", "store.values", "versions.dag")
CLIENT_LIBRARIES = {"plyvel": {"store.leveldb"}, "boto3": {"store.s3"}, "botocore": {"store.s3"}}


def _group(mod: str) -> str:
    head = mod.split(".")[0]
    for name, (_, prefixes) in LAYERS.items():
        if head in prefixes:
            return name
    raise AssertionError(f"dvidfs.{mod} is in no layer: add it to LAYERS in {__file__}")


def _module(package: str, name: str) -> str:
    """package.name if that is a module (source or C extension), else package."""
    rel = package.removeprefix("dvidfs").lstrip(".")
    folder = ROOT.joinpath(*rel.split(".")) if rel else ROOT
    if (folder / f"{name}.py").exists() or any(folder.glob(f"{name}.*.so")) or (folder / name).is_dir():
        return f"{rel}.{name}" if rel else name
    return rel


def _imports():
    """(module, imported dvidfs module or library, line) for every import in dvidfs/."""
    for path in sorted(ROOT.rglob("*.py")):
        mod = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        if mod.endswith("__init__"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module == "dvidfs" or node.module.startswith("dvidfs."):
                    for a in node.names:  # `from dvidfs.store import keys` imports dvidfs.store.keys
                        yield mod, _module(node.module, a.name), node.lineno
                elif node.level == 0:
                    yield mod, "!" + node.module.split(".")[0], node.lineno
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("dvidfs."):
                        yield mod, a.name.removeprefix("dvidfs."), node.lineno
                    else:
                        yield mod, "!" + a.name.split(".")[0], node.lineno


def test_no_upward_or_sideways_imports():
    bad = []
    for mod, dep, line in _imports():
        if dep.startswith("!"):  # a library
            continue
        g, d = _group(mod), _group(dep)
        (rank, _), (dep_rank, _) = LAYERS[g], LAYERS[d]
        if dep_rank > rank or (dep_rank == rank and g != d):
            bad.append(f"dvidfs/{mod.replace('.', '/')}.py:{line}: {g} imports {d} (dvidfs.{dep})")
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_front_ends_reach_nothing_past_the_core():
    bad = [f"{mod}:{line} imports dvidfs.{dep}" for mod, dep, line in _imports()
           if _group(mod) == "frontends" and dep.startswith(FRONTEND_MAY_NOT)]
    assert not bad, "front ends must go through dvidfs.core:\n" + "\n".join(bad)


def test_only_engine_drivers_import_client_libraries():
    bad = [f"{mod}:{line} imports {dep[1:]}" for mod, dep, line in _imports()
           if dep.startswith("!") and dep[1:] in CLIENT_LIBRARIES and mod not in CLIENT_LIBRARIES[dep[1:]]]
    assert not bad, "\n".join(bad)


def test_the_checker_sees_imports():
    """The walk finds known arrows, so the tests above cannot pass vacuously."""
    found = {(m, d) for m, d, _ in _imports()}
    assert ("core", "data.types") in found
    assert ("store.leveldb", "!plyvel") in found
    assert ("store.s3", "!boto3") in found and ("store.s3", "!botocore") in found
    assert ("fs.tree", "core") in found
    assert ("data.labels", "store.keys") in found  # from dvidfs.store import keys
