"""Fill a store with the deterministic EM-like sample (demo, tests, benchmarks).

With `extras`, the sample also shows the non-voxel types on the same voxels, so a
new user finds all of them in the demo: an `roi` (an ellipsoid of blocks around
the volume's centre), a `synapses` annotation synced to `segmentation` (PreSyn
points on one side of a body boundary, their PostSyn partners just across it,
tagged "sample") and a `synapses_labelsz` instance synced to it (the name
dvidtools' get_n_synapses looks for).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from dvidfs.core import Dvid
from dvidfs.errors import ExistsError
from dvidfs.sample import iter_sample
from dvidfs.versions.model import Node

ROI_BLOCK = 32
SYNAPSES_PER_MVOXEL = 30      # PreSyn elements per 10⁶ voxels (256x256x128: ~250)


def build_sample_store(store: Dvid, size_xyz, repo: str = "sample", seed: int = 0,
                       progress: Callable[[int], None] | None = None, labels: bool = True,
                       block_size: int | None = None, commit: bool = True, extras: bool = False) -> str:
    """Create repo `repo` with a `grayscale` (and `segmentation` labels) instance
    holding the sample (and, with `extras` and labels, an roi and synapses),
    commit the root, and return its UUID."""
    if any(r.alias == repo for r in store.repos()):
        raise ExistsError(f"repo {repo!r} already exists in {store.path}")
    r = store.new_repo(repo, "deterministic EM-like sample volume")
    root = store.node(r.root)
    gray = store.new_instance(root, "grayscale", "grayscale", block_size=block_size)
    seg = None
    if labels:
        seg = store.new_instance(root, "segmentation", "labels")
    sx, sy, sz = size_xyz
    synapses = _SynapsePicker(sx * sy * sz, seed) if labels and extras else None
    for z0, g, lab in iter_sample((sz, sy, sx), seed=seed, slab=gray.grid.size[2]):
        gray.write(root, (0, 0, z0), g)
        if seg is not None:
            seg.write(root, (0, 0, z0), lab)
        if synapses is not None:
            synapses.pick(z0, lab)
        if progress:
            progress(g.shape[0])
    if synapses is not None:
        add_roi(store, root, size_xyz)
        ann = store.new_instance(root, "synapses", "annotation")
        ann.set_sync(root, "segmentation")
        ann.put_elements(root, synapses.elements)
        lsz = store.new_instance(root, "synapses_labelsz", "labelsz")
        lsz.set_sync(root, "synapses")
    if commit:
        store.commit(root, "sample volume", [f"sample {sx}x{sy}x{sz} seed {seed}"])
    return root.uuid


def add_roi(store: Dvid, node: Node, size_xyz, name: str = "roi") -> None:
    """An roi of the 32³ blocks whose centres lie in the ellipsoid around the
    volume's centre with semi-axes a third of its sides (at least one block)."""
    nb = [max(1, -(-s // ROI_BLOCK)) for s in size_xyz]
    centre = [s / 2 for s in size_xyz]
    radius = [max(s / 3, ROI_BLOCK) for s in size_xyz]
    spans = []
    for bz in range(nb[2]):
        for by in range(nb[1]):
            xs = [bx for bx in range(nb[0])
                  if sum((((b + 0.5) * ROI_BLOCK - c) / r) ** 2
                         for b, c, r in zip((bx, by, bz), centre, radius)) <= 1]
            if xs:
                spans.append([bz, by, xs[0], xs[-1]])
    roi = store.new_instance(node, name, "roi", block_size=ROI_BLOCK)
    roi.put_spans(node, spans)


class _SynapsePicker:
    """Synapses on body boundaries, chosen slab by slab from the label voxels:
    a PreSyn at a voxel of body A whose +x neighbour belongs to another body,
    with PostSyn partners at the neighbours (+x, and ±y when they too leave A)."""

    def __init__(self, voxels: int, seed: int):
        self.rng = np.random.default_rng(seed + 7)
        self.per_voxel = SYNAPSES_PER_MVOXEL / 1e6
        self.elements: list[dict] = []
        self.used: set[tuple[int, int, int]] = set()

    def pick(self, z0: int, lab: np.ndarray) -> None:
        nz, ny, nx = lab.shape
        if nx < 2:
            return
        edge = (lab[:, :, :-1] != lab[:, :, 1:]) & (lab[:, :, :-1] != 0) & (lab[:, :, 1:] != 0)
        zs, ys, xs = np.nonzero(edge)
        want = min(len(zs), int(round(lab.size * self.per_voxel)))
        if want == 0:
            return
        for i in self.rng.choice(len(zs), size=want, replace=False):
            z, y, x = int(zs[i]), int(ys[i]), int(xs[i])
            body = lab[z, y, x]
            pre = (x, y, z0 + z)
            posts = [(x + 1, y, z0 + z)]
            for dy in (-1, 1):
                if 0 <= y + dy < ny and lab[z, y + dy, x] not in (0, body):
                    posts.append((x, y + dy, z0 + z))
            if pre in self.used or any(p in self.used for p in posts):
                continue
            self.used.update([pre, *posts])
            self.elements.append({"Pos": list(pre), "Kind": "PreSyn", "Tags": ["sample"],
                                  "Prop": {"conf": f"{0.5 + 0.5 * self.rng.random():.2f}"},
                                  "Rels": [{"Rel": "PreSynTo", "To": list(p)} for p in posts]})
            for p in posts:
                self.elements.append({"Pos": list(p), "Kind": "PostSyn", "Tags": ["sample"],
                                      "Rels": [{"Rel": "PostSynTo", "To": list(pre)}]})
