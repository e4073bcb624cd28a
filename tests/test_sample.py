"""Tests for dvidfs.sample: deterministic synthetic EM volumes.

Small volumes only (48 x 64 x 80 with the default 24-voxel cells, i.e. grid
layers at z = 24 so slab boundaries can straddle them); the whole file runs
in about a second.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dvidfs import sample
from dvidfs.errors import InvalidInputError
from dvidfs.sample import iter_sample, make_sample, sample_slab

SHAPE = (48, 64, 80)


@pytest.fixture(scope="module")
def vol() -> tuple[np.ndarray, np.ndarray]:
    return make_sample(SHAPE, seed=7)


def _boundary(labels: np.ndarray) -> np.ndarray:
    """Voxels with at least one 6-neighbour of a different label."""
    b = np.zeros(labels.shape, bool)
    for ax in range(3):
        diff = np.diff(labels, axis=ax) != 0
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[ax], hi[ax] = slice(None, -1), slice(1, None)
        b[tuple(lo)] |= diff
        b[tuple(hi)] |= diff
    return b


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    """6-neighbourhood binary dilation, `steps` times."""
    mask = mask.copy()
    for _ in range(steps):
        grown = mask.copy()
        for ax in range(3):
            lo = [slice(None)] * 3
            hi = [slice(None)] * 3
            lo[ax], hi[ax] = slice(None, -1), slice(1, None)
            grown[tuple(lo)] |= mask[tuple(hi)]
            grown[tuple(hi)] |= mask[tuple(lo)]
        mask = grown
    return mask


def _components(labels: np.ndarray) -> np.ndarray:
    """6-connected components of equal label: per voxel, the smallest flat
    index in its component (min-propagation plus pointer jumping)."""
    comp = np.arange(labels.size).reshape(labels.shape)
    while True:
        before = comp.copy()
        for ax in range(3):
            lo = [slice(None)] * 3
            hi = [slice(None)] * 3
            lo[ax], hi[ax] = slice(None, -1), slice(1, None)
            lo, hi = tuple(lo), tuple(hi)
            same = labels[lo] == labels[hi]
            m = np.where(same, np.minimum(comp[lo], comp[hi]), comp[lo])
            comp[lo] = m
            comp[hi] = np.where(same, np.minimum(comp[hi], m), comp[hi])
        flat = comp.ravel()
        for _ in range(4):
            flat = flat[flat]
        comp = flat.reshape(labels.shape)
        if np.array_equal(comp, before):
            return comp


# --- shape, dtype, determinism -------------------------------------------

def test_dtype_and_shape(vol):
    gray, labels = vol
    assert gray.shape == labels.shape == SHAPE
    assert gray.dtype == np.uint8 and labels.dtype == np.uint64
    assert gray.flags.c_contiguous and labels.flags.c_contiguous
    g, lab = sample_slab(SHAPE, 5, 9, seed=7)
    assert g.shape == lab.shape == (4, 64, 80)
    assert g.dtype == np.uint8 and lab.dtype == np.uint64


def test_same_seed_same_bytes(vol):
    gray, labels = make_sample(SHAPE, seed=7)
    assert gray.tobytes() == vol[0].tobytes()
    assert labels.tobytes() == vol[1].tobytes()


def test_different_seed_differs(vol):
    gray, labels = make_sample(SHAPE, seed=8)
    assert np.mean(gray != vol[0]) > 0.5
    assert not set(np.unique(labels)) & set(np.unique(vol[1]))


def test_cell_size_changes_cells(vol):
    _, labels = make_sample(SHAPE, seed=7, cell_size=12)
    assert len(np.unique(labels)) > 3 * len(np.unique(vol[1]))


# --- slabs are independent -------------------------------------------------

@pytest.mark.parametrize("z0,z1", [(0, 1), (0, 48), (5, 29), (23, 25), (24, 48), (47, 48), (13, 13)])
def test_slab_equals_slice(vol, z0, z1):
    gray, labels = sample_slab(SHAPE, z0, z1, seed=7)
    assert np.array_equal(gray, vol[0][z0:z1])
    assert np.array_equal(labels, vol[1][z0:z1])


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 48), st.integers(0, 48))
def test_slab_equals_slice_any_range(vol, a, b):
    z0, z1 = min(a, b), max(a, b)
    gray, labels = sample_slab(SHAPE, z0, z1, seed=7, workers=1)
    assert np.array_equal(gray, vol[0][z0:z1])
    assert np.array_equal(labels, vol[1][z0:z1])


def test_iter_sample_odd_slabs_reassemble(vol):
    parts = list(iter_sample(SHAPE, seed=7, slab=7))
    assert [z0 for z0, _, _ in parts] == list(range(0, 48, 7))
    assert np.array_equal(np.concatenate([g for _, g, _ in parts]), vol[0])
    assert np.array_equal(np.concatenate([lab for _, _, lab in parts]), vol[1])


def test_make_sample_slab_size_and_workers_irrelevant(vol):
    gray, labels = make_sample(SHAPE, seed=7, slab=5, workers=1)
    assert np.array_equal(gray, vol[0]) and np.array_equal(labels, vol[1])
    gray, labels = make_sample(SHAPE, seed=7, slab=48, workers=3)
    assert np.array_equal(gray, vol[0]) and np.array_equal(labels, vol[1])


def test_values_depend_only_on_global_coordinate(vol):
    # A smaller/deeper volume is a crop of the same infinite pattern: no
    # dependence on padding, extent, or the last partial grid cell.
    gray, labels = make_sample((30, 50, 61), seed=7)
    assert np.array_equal(gray, vol[0][:30, :50, :61])
    assert np.array_equal(labels, vol[1][:30, :50, :61])
    gray, labels = sample_slab((100, 64, 80), 40, 48, seed=7)
    assert np.array_equal(gray, vol[0][40:48])


# --- labels ----------------------------------------------------------------

def test_label_ids_unique_large_nonzero(vol):
    ids = np.unique(vol[1])
    assert len(ids) >= 20
    assert ids[0] >= 1 and ids[-1] <= 2**40
    assert np.mean(ids > 2**32) > 0.5  # really exercises uint64
    assert not np.all(np.diff(ids) == 1)  # not a contiguous range


def test_seed_voxel_has_its_cells_label(vol):
    labels = vol[1]
    cs = 24
    sl = sample._Slab(SHAPE, 0, SHAPE[0], 7, cs)  # grid tables, halo offset 1
    checked = 0
    for cz in range(2):
        for cy in range(3):
            for cx in range(4):
                z, y, x = np.rint(sl.params[cz + 1, cy + 1, cx + 1, :3]).astype(int)
                if z < SHAPE[0] and y < SHAPE[1] and x < SHAPE[2]:
                    assert labels[z, y, x] == sl.ids[cz + 1, cy + 1, cx + 1]
                    checked += 1
    assert checked >= 12


def test_labels_mostly_connected(vol):
    labels = vol[1]
    comp = _components(labels)
    roots, sizes = np.unique(comp, return_counts=True)
    root_label = labels.ravel()[roots]
    total = {}
    largest = {}
    for lab, n in zip(root_label.tolist(), sizes.tolist()):
        total[lab] = total.get(lab, 0) + n
        largest[lab] = max(largest.get(lab, 0), n)
    assert sum(largest.values()) >= 0.99 * labels.size
    for lab, n in total.items():
        if n >= 200:
            assert largest[lab] >= 0.9 * n, lab


def test_components_helper_can_fail():
    # Guard that the connectivity check above is not vacuous.
    labels = np.zeros((3, 5, 5), np.uint64)
    labels[:, :, 2] = 1  # a wall splits label 0 into two pieces
    comp = _components(labels)
    assert len(np.unique(comp[labels == 0])) == 2
    assert len(np.unique(comp[labels == 1])) == 1


# --- gray --------------------------------------------------------------------

def test_membranes_darker_than_interiors(vol):
    gray, labels = vol
    b = _boundary(labels)
    assert 0.05 < b.mean() < 0.5
    assert gray[b].mean() < gray[~b].mean() - 50


def test_cells_differ_in_brightness(vol):
    # Median gray of each cell's deep interior (>= 3 voxels from any wall, so
    # membranes don't leak in) must vary from cell to cell.
    gray, labels = vol
    near = _dilate(_boundary(labels), 3)
    medians = [
        np.median(gray[(labels == lab) & ~near])
        for lab in np.unique(labels)
        if np.count_nonzero((labels == lab) & ~near) > 300
    ]
    assert len(medians) >= 10
    assert np.std(medians) > 6


def test_dark_dots_inside_cells(vol):
    # Vesicles / mitochondria: deep-interior voxels far darker than their
    # cell's median.  Noise alone gives ~0.3%; with the blobs it is ~4%.
    gray, labels = vol
    near = _dilate(_boundary(labels), 3)
    dark = total = 0
    for lab in np.unique(labels):
        v = gray[(labels == lab) & ~near].astype(float)
        if v.size > 300:
            dark += np.count_nonzero(v < np.median(v) - 40)
            total += v.size
    assert dark / total > 0.01


def test_per_voxel_noise(vol):
    # Neighbouring voxels inside a cell differ by noise (typical |diff| ~ 14),
    # not by nothing (flat cells) and not by garbage.
    gray, labels = vol
    g = gray.astype(float)
    same = (labels[:, :, 1:] == labels[:, :, :-1]) & ~_boundary(labels)[:, :, 1:]
    diff = np.abs(g[:, :, 1:][same] - g[:, :, :-1][same])
    assert 6 < np.median(diff) < 30


def test_cells_are_irregular():
    # Jittered seeds and per-cell metrics: cells away from the volume border
    # have clearly different sizes (a regular lattice would give CV ~ 0).
    _, labels = make_sample(SHAPE, seed=7, cell_size=12)
    faces = [labels[[0, -1]], labels[:, [0, -1]], labels[:, :, [0, -1]]]
    border = np.unique(np.concatenate([f.ravel() for f in faces]))
    ids, counts = np.unique(labels, return_counts=True)
    inner = counts[~np.isin(ids, border)]
    assert len(inner) >= 20
    assert inner.std() / inner.mean() > 0.1


# --- arguments ---------------------------------------------------------------

@pytest.mark.parametrize(
    "call",
    [
        lambda: sample_slab((0, 8, 8), 0, 0),
        lambda: sample_slab((8, 8), 0, 1),
        lambda: sample_slab((8, 8, 8), 3, 2),
        lambda: sample_slab((8, 8, 8), 0, 9),
        lambda: sample_slab((8, 8, 8), 0, 1, cell_size=2),
        lambda: make_sample((8, 8, 8), slab=0),
        lambda: list(iter_sample((8, 8, 8), slab=0)),
    ],
)
def test_bad_arguments(call):
    with pytest.raises(InvalidInputError):
        call()


def test_sample_store_extras_sit_on_the_sample(tmp_path):
    """`dvidfs sample` (extras on): every PreSyn's partners are voxels of other
    bodies next to it (labels from numpy's make_sample, not from the store); the
    label query of the synapses agrees with those labels; the roi is the
    ellipsoid of blocks it is documented to be; labelsz counts the same."""
    from dvidfs.core import Dvid
    from dvidfs.samplestore import ROI_BLOCK, build_sample_store

    size = (96, 80, 64)
    _, lab = make_sample(size[::-1], seed=3)          # [z, y, x]
    with Dvid.init(str(tmp_path / "s")) as s:
        node = s.node(build_sample_store(s, size, seed=3, extras=True))
        ann, seg, roi = s.data(node, "synapses"), s.data(node, "segmentation"), s.data(node, "roi")
        els = ann.all_elements(node)
        label = {tuple(e["Pos"]): int(lab[e["Pos"][2], e["Pos"][1], e["Pos"][0]]) for e in els}
        pres = [e for e in els if e["Kind"] == "PreSyn"]
        assert len(pres) >= 0.5 * 30 * np.prod(size) / 1e6
        for e in pres:
            assert e["Rels"] and all(r["Rel"] == "PreSynTo" for r in e["Rels"])
            for r in e["Rels"]:
                to = tuple(r["To"])
                assert sum(abs(a - b) for a, b in zip(to, e["Pos"])) == 1
                assert label[to] not in (0, label[tuple(e["Pos"])])
                assert any(p["To"] == e["Pos"] for p in ann.element(node, to)["Rels"])
        assert len(els) == len(pres) + sum(len(e["Rels"]) for e in pres)
        view = s.view(node)
        body = max(set(label.values()), key=list(label.values()).count)
        want = sorted(p for p, b in label.items() if b == body)
        assert sorted(tuple(e["Pos"]) for e in ann.label_elements(view, seg, body)) == want
        lsz = s.data(node, "synapses_labelsz")
        assert lsz.count(view, ann, seg, body, "PreSyn") == sum(
            1 for e in pres if label[tuple(e["Pos"])] == body)
        # roi: blocks whose centres are inside the ellipsoid of semi-axes a third of the sides
        centre = [v / 2 for v in size]
        radius = [max(v / 3, ROI_BLOCK) for v in size]
        grid = np.stack(np.meshgrid(*[(np.arange(-(-v // ROI_BLOCK)) + 0.5) * ROI_BLOCK for v in size],
                                    indexing="ij"), axis=-1)   # [x, y, z, 3]
        inside = (((grid - centre) / radius) ** 2).sum(axis=-1) <= 1
        mask = roi.mask(node, (0, 0, 0), tuple(n * ROI_BLOCK for n in inside.shape))   # [z, y, x]
        want_mask = inside.transpose(2, 1, 0).repeat(ROI_BLOCK, 0).repeat(ROI_BLOCK, 1).repeat(ROI_BLOCK, 2)
        assert inside.any() and np.array_equal(mask.astype(bool), want_mask)
