"""Fill a store with the deterministic EM-like sample (demo, tests, benchmarks)."""
from __future__ import annotations

from typing import Callable

from dvidfs.core import Dvid
from dvidfs.errors import ExistsError
from dvidfs.sample import iter_sample


def build_sample_store(store: Dvid, size_xyz, repo: str = "sample", seed: int = 0,
                       progress: Callable[[int], None] | None = None, labels: bool = True,
                       block_size: int | None = None, commit: bool = True) -> str:
    """Create repo `repo` with a `grayscale` (and `segmentation` labels) instance
    holding the sample, commit the root, and return its UUID."""
    if any(r.alias == repo for r in store.repos()):
        raise ExistsError(f"repo {repo!r} already exists in {store.path}")
    r = store.new_repo(repo, "deterministic EM-like sample volume")
    root = store.node(r.root)
    gray = store.new_instance(root, "grayscale", "grayscale", block_size=block_size)
    seg = None
    if labels:
        seg = store.new_instance(root, "segmentation", "labels")
    sx, sy, sz = size_xyz
    for z0, g, lab in iter_sample((sz, sy, sx), seed=seed, slab=gray.grid.size[2]):
        gray.write(root, (0, 0, z0), g)
        if seg is not None:
            seg.write(root, (0, 0, z0), lab)
        if progress:
            progress(g.shape[0])
    if commit:
        store.commit(root, "sample volume", [f"sample {sx}x{sy}x{sz} seed {seed}"])
    return root.uuid
