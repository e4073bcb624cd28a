"""DVID's own Python clients against a live `dvidfs serve`: dvidtools 0.6 (imports
as `dvid`) and dvid-point-cloud 0.1, called exactly as their users call them.

Every answer is compared with numpy on the deterministic sample (see
clients_support.py for the store: root, master child with one merge, branch
"side"), never with the output of our own encoders.  Coordinates: the clients
speak x, y, z; the numpy arrays are [z, y, x].
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import requests

dvid = pytest.importorskip("dvid", reason="dvidtools is in the test extras")
dpc = pytest.importorskip("dvid_point_cloud", reason="dvid-point-cloud is in the test extras")
from dvid_point_cloud.client import DVIDClient  # noqa: E402
from dvid_point_cloud.sampling import accurate_sample_rles  # noqa: E402

from clients_support import BLOCK, SIZE_XYZ, World, served_world, sort_xyz  # noqa: E402


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    yield from served_world(tmp_path_factory.mktemp("clients") / "store")


def in_body(w: World, node: str, body: int, xyz, scale: int = 0) -> np.ndarray:
    """Boolean per point: is (x, y, z) (scale-`scale` voxels) inside `body`?"""
    xyz = np.asarray(xyz, dtype=np.int64).reshape(-1, 3)
    lev = w.level(node, scale)
    inside = ((xyz >= 0) & (xyz < np.array(lev.shape[::-1]))).all(axis=1)
    out = np.zeros(len(xyz), bool)
    p = xyz[inside]
    out[inside] = lev[p[:, 2], p[:, 1], p[:, 0]] == body
    return out


# ============================================================== dvidtools: repos and nodes

def test_dvidtools_list_projects(world):
    df = dvid.list_projects(server=world.url)
    assert len(df) == 1
    row = df.iloc[0]
    assert row["Alias"] == "sample"
    assert row["Root"] == world.root
    assert set(row["DataInstances"]) == {"grayscale", "segmentation"}
    assert set(row["DAG"]["Nodes"]) == {world.root, world.child, world.side}


def test_dvidtools_master_node_and_branch_history(world):
    assert dvid.get_master_node(world.root, server=world.url) == world.child
    assert dvid.get_branch_history(world.root, server=world.url) == [world.child, world.root]
    # dvidtools always asks for branch-versions/master: from any node of the repo
    assert dvid.get_branch_history(world.side, server=world.url) == [world.child, world.root]
    assert dvid.get_master_node(world.child[:8], server=world.url) == world.child


def test_dvidtools_branch_history_of_unknown_uuid_raises(world):
    with pytest.raises(requests.HTTPError, match="400"):
        dvid.get_branch_history("ffffffffffff", server=world.url)


def test_dvidtools_segmentation_info(world):
    info = dvid.get_segmentation_info(world.url, world.child)
    assert info["Base"]["TypeName"] == "labelmap"
    assert info["Base"]["Name"] == "segmentation"
    ext = info["Extended"]
    assert list(ext["BlockSize"]) == [BLOCK] * 3
    assert list(ext["VoxelSize"]) == [8, 8, 8]
    # dvidtools builds its voxel-size table from range(MaxDownresLevel)
    assert isinstance(ext["MaxDownresLevel"], int) and ext["MaxDownresLevel"] >= 1
    assert list(ext["MinPoint"]) == [0, 0, 0]
    assert list(ext["MaxPoint"]) == [s - 1 for s in SIZE_XYZ]


# ============================================================== dvidtools: sparse volumes

def test_dvidtools_sparsevol_coarse_is_the_bodys_blocks(world):
    for node, body in ((world.child, world.big), (world.root, world.big), (world.child, world.small)):
        got = dvid.get_sparsevol(body, scale="COARSE", server=world.url, node=node)
        assert np.array_equal(sort_xyz(got), world.blocks_xyz(node, body)), (node, body)
    # at the child the merged body covers the blocks of both
    union = sort_xyz(np.unique(np.vstack([world.blocks_xyz(world.root, world.big),
                                          world.blocks_xyz(world.root, world.merged_away)]), axis=0))
    got = dvid.get_sparsevol(world.big, scale="coarse", server=world.url, node=world.child)
    assert np.array_equal(sort_xyz(got), union)


def test_dvidtools_sparsevol_scale0_voxels(world):
    for node, body in ((world.root, world.small), (world.child, world.big), (world.root, world.merged_away)):
        got = dvid.get_sparsevol(body, scale=0, server=world.url, node=node)
        assert got.shape == (world.count(node, body), 3)
        assert np.array_equal(sort_xyz(got), world.voxels_xyz(node, body)), (node, body)


def test_dvidtools_sparsevol_rles(world):
    """voxels=False: the raw x, y, z, length spans."""
    node, body = world.child, world.big
    rles = dvid.get_sparsevol(body, scale=0, voxels=False, server=world.url, node=node).astype(np.int64)
    assert rles.shape[1] == 4 and (rles[:, 3] > 0).all()
    assert int(rles[:, 3].sum()) == world.count(node, body)
    expanded = np.vstack([np.column_stack([np.arange(x, x + n), np.full(n, y), np.full(n, z)])
                          for x, y, z, n in rles])
    assert np.array_equal(sort_xyz(expanded), world.voxels_xyz(node, body))


def test_dvidtools_sparsevol_scale1(world):
    node, body = world.child, world.big
    got = dvid.get_sparsevol(body, scale=1, server=world.url, node=node)
    assert np.array_equal(sort_xyz(got), world.voxels_xyz(node, body, scale=1))


def test_dvidtools_sparsevol_with_bbox(world):
    """bbox [x0, x1, y0, y1, z0, z1], inclusive, scale 0 (HEAD first, then GET)."""
    node, body = world.child, world.big
    bbox = [10, 90, 3, 127, 5, 40]
    got = dvid.get_sparsevol(body, scale=0, bbox=bbox, server=world.url, node=node)
    allv = world.voxels_xyz(node, body)
    lo, hi = np.array(bbox[0::2]), np.array(bbox[1::2])
    want = allv[((allv >= lo) & (allv <= hi)).all(axis=1)]
    assert len(want) and len(want) < len(allv)
    assert np.array_equal(sort_xyz(got), want)


def test_dvidtools_sparsevol_coords(world):
    """ret_type="COORDS" scales by VoxelSize * 2^scale, a table dvidtools builds
    from range(MaxDownresLevel): MaxDownresLevel 0 would make this a KeyError."""
    node, body = world.root, world.small
    got = dvid.get_sparsevol(body, scale=0, ret_type="COORDS", server=world.url, node=node)
    assert np.array_equal(sort_xyz(got), world.voxels_xyz(node, body) * 8)
    got = dvid.get_sparsevol(body, scale="COARSE", ret_type="COORDS", server=world.url, node=node)
    assert np.array_equal(sort_xyz(got), world.blocks_xyz(node, body) * BLOCK * 8)


def test_dvidtools_mesh_neuron_scale0(world):
    """Marching cubes on the scale-0 sparsevol: watertight, the body's volume
    (in nm³, 8 nm voxels) within 2 %, bounds within a voxel of the body's."""
    for node, body in ((world.root, world.small), (world.child, world.big)):
        m = dvid.mesh_neuron(body, scale=0, progress=False, server=world.url, node=node)
        v = world.voxels_xyz(node, body)
        assert m.is_watertight
        assert abs(m.volume / (len(v) * 8**3) - 1) < 0.02, (m.volume, len(v))
        assert np.abs(m.bounds[0] - v.min(axis=0) * 8).max() <= 8
        assert np.abs(m.bounds[1] - (v.max(axis=0) + 1) * 8).max() <= 8


def test_dvidtools_sparsevol_bbox_without_the_body_raises(world):
    """HEAD sparsevol must say 204 when the body has no voxels in the bounds
    (widened to whole blocks); dvidtools then raises ValueError."""
    node, body = world.root, world.small
    (bx, by, bz), = world.blocks_xyz(node, body)
    other = ((bx + 1) % 2, by, bz)                 # a neighbouring 64³ block without it
    lo = np.array(other) * BLOCK
    bbox = [lo[0] + 1, lo[0] + 62, lo[1] + 1, lo[1] + 62, lo[2] + 1, lo[2] + 62]
    with pytest.raises(ValueError, match="no sparse volume"):
        dvid.get_sparsevol(body, scale=0, bbox=bbox, server=world.url, node=node)
    with pytest.raises(ValueError, match="no sparse volume"):
        dvid.get_sparsevol(body, scale=0, bbox=[1000, 1100, 0, 10, 0, 10], server=world.url, node=node)


def test_dvidtools_sparsevol_of_absent_body_is_404(world):
    for node, body in ((world.child, world.absent[0]), (world.child, world.merged_away)):
        with pytest.raises(requests.HTTPError) as exc:
            dvid.get_sparsevol(body, scale=0, server=world.url, node=node)
        assert exc.value.response.status_code == 404, (node, body)


def test_dvidtools_sparsevol_size(world):
    for node, body in ((world.child, world.big), (world.root, world.small)):
        d = dvid.get_sparsevol_size(body, server=world.url, node=node)
        blocks = world.blocks_xyz(node, body)
        assert d["voxels"] == world.count(node, body)
        assert d["numblocks"] == len(blocks)
        # block-accurate bounds, inclusive
        assert list(d["minvoxel"]) == (blocks.min(axis=0) * BLOCK).tolist()
        assert list(d["maxvoxel"]) == ((blocks.max(axis=0) + 1) * BLOCK - 1).tolist()
    with pytest.raises(requests.HTTPError) as exc:
        dvid.get_sparsevol_size(world.absent[0], server=world.url, node=world.child)
    assert exc.value.response.status_code == 404


# ============================================================== dvidtools: labels and sizes

def test_dvidtools_locs_to_ids(world):
    rng = np.random.default_rng(7)
    pts = np.column_stack([rng.integers(0, s, 400) for s in SIZE_XYZ])
    for node in (world.child, world.root):
        got = dvid.locs_to_ids(pts, progress=False, server=world.url, node=node)
        lab = world.bodies(node)
        want = lab[pts[:, 2], pts[:, 1], pts[:, 0]]
        assert got.dtype.kind in "iu" and np.array_equal(got.astype(np.uint64), want), node
    # outside the volume (absent blocks) the label is 0, as in DVID
    got = dvid.locs_to_ids([[-1, 5, 5], [300, 5, 5], [5, 5, 64]], progress=False,
                           server=world.url, node=world.child)
    assert got.tolist() == [0, 0, 0]


def test_dvidtools_locs_to_ids_in_chunks(world):
    pts = world.voxels_xyz(world.child, world.big)[::97]
    got = dvid.locs_to_ids(pts, chunk_size=10, progress=False, server=world.url, node=world.child)
    assert len(got) == len(pts) and (got == world.big).all()


def test_dvidtools_get_sizes(world):
    ids = [world.big, world.merged_away, world.small, *world.absent]
    got = dvid.get_sizes(ids, progress=False, server=world.url, node=world.child)
    want = [world.count(world.child, i) for i in ids]
    assert want[1] == 0 and want[0] == int((world.sv == world.big).sum() + (world.sv == world.merged_away).sum())
    assert got.tolist() == want
    got = dvid.get_sizes(ids, progress=False, server=world.url, node=world.root)
    assert got.tolist() == [int(np.count_nonzero(world.sv == i)) for i in ids]


def test_dvidtools_get_sizes_of_every_body(world):
    ids, counts = np.unique(world.sv, return_counts=True)
    got = dvid.get_sizes(ids, chunk_size=50, progress=False, server=world.url, node=world.root)
    assert got.tolist() == counts.tolist()


def test_dvidtools_ids_exist(world):
    ids = [world.big, world.merged_away, world.small, *world.absent]
    got = dvid.ids_exist(ids, progress=False, server=world.url, node=world.child)
    assert got.tolist() == [True, False, True] + [False] * len(world.absent)
    got = dvid.ids_exist(ids, progress=False, server=world.url, node=world.root)
    assert got.tolist() == [True, True, True] + [False] * len(world.absent)


def test_dvidtools_find_lost_ids(world):
    ids = [world.big, world.merged_away, world.absent[0]]
    got = dvid.find_lost_ids(ids, progress=False, server=world.url, node=world.child)
    assert list(got) == [world.child, world.root, None]


# ============================================================== dvidtools: positions

def _eroded(voxels: np.ndarray) -> np.ndarray:
    """dvidtools' own loop: erode until the next step would leave nothing."""
    from dvid import meshing
    while True:
        e = meshing.remove_surface_voxels(voxels)
        if e.size == 0:
            return voxels
        voxels = e


def test_dvidtools_get_body_position(world):
    """dvidtools 0.6 erodes the coarse body, takes a block, erodes the body's
    scale-0 voxels in it.  Its erosion helper pads the mask by one voxel and
    forgets the pad (meshing._voxels_to_matrix), so every erosion step shifts the
    result by +1 per axis: the position may fall outside the body.  So: the
    client's answer must equal what its algorithm gives on the true data."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")        # "no skeleton" (segmentation_skeletons is absent)
        for node, body in ((world.root, world.small), (world.child, world.big)):
            pos = dvid.get_body_position(body, server=world.url, node=node)
            v = _eroded(world.blocks_xyz(node, body))[0] * BLOCK
            allv = world.voxels_xyz(node, body)
            fine = allv[((allv >= v) & (allv <= v + BLOCK)).all(axis=1)]
            want = _eroded(fine)[0]
            assert np.array_equal(np.asarray(pos, dtype=np.int64), want), (node, body, pos, want)


def test_dvidtools_snap_to_body(world):
    node, body = world.child, world.big
    inside = world.voxels_xyz(node, body)[[0, len(world.voxels_xyz(node, body)) // 2]]
    outside = world.voxels_xyz(node, world.small)[[0, -1]]
    positions = np.vstack([inside, outside])
    got = dvid.snap_to_body(body, positions.copy(), server=world.url, node=node)
    assert got.shape == positions.shape
    assert in_body(world, node, body, got).all(), got
    assert np.array_equal(got[:2], inside)          # already inside: unchanged
    assert not np.array_equal(got[2:], outside)


def test_dvidtools_last_mod(world):
    d = dvid.get_last_mod(world.big, server=world.url, node=world.child)
    rec = world.merge_record
    assert d["mutation id"] == rec["MutationID"]
    assert isinstance(d["last mod time"], str) and d["last mod time"][:10] == rec["Timestamp"][:10]
    assert "last mod user" in d and "last mod app" in d
    with pytest.raises(requests.HTTPError) as exc:
        dvid.get_last_mod(world.absent[0], server=world.url, node=world.child)
    assert exc.value.response.status_code == 404


# ============================================================== dvid-point-cloud

def test_point_cloud_client_info_label_labels(world):
    c = DVIDClient(world.url)
    info = c.get_info(world.child, "segmentation")
    assert info["Extended"]["MaxDownresLevel"] >= 1
    lab = world.bodies(world.child)
    for x, y, z in [(0, 0, 0), (127, 127, 63), (64, 3, 31), (17, 99, 50)]:
        assert c.get_label(world.child, "segmentation", (x, y, z)) == int(lab[z, y, x])
    # supervoxels=true: the unmapped supervoxel under the merge
    p = world.voxels_xyz(world.root, world.merged_away)[0]
    assert c.get_label(world.child, "segmentation", tuple(p)) == world.big
    assert c.get_label(world.child, "segmentation", tuple(p), supervoxels=True) == world.merged_away
    pts = world.voxels_xyz(world.root, world.merged_away)[::50].tolist()
    assert c.get_labels(world.child, "segmentation", pts) == [world.big] * len(pts)
    assert c.get_labels(world.child, "segmentation", pts, supervoxels=True) == [world.merged_away] * len(pts)


def test_point_cloud_sparse_vol_stats(world):
    c = DVIDClient(world.url)
    st = c.get_sparse_vol_stats(world.child, "segmentation", world.big)
    blocks = world.blocks_xyz(world.child, world.big)
    assert st.num_voxels == world.count(world.child, world.big)
    assert st.num_blocks == len(blocks)
    assert st.min_voxel == tuple((blocks.min(axis=0) * BLOCK).tolist())
    assert st.max_voxel == tuple(((blocks.max(axis=0) + 1) * BLOCK - 1).tolist())


def test_point_cloud_get_supervoxels(world):
    c = DVIDClient(world.url)
    assert sorted(c.get_supervoxels(world.child, "segmentation", world.big).tolist()) == \
        sorted([world.big, world.merged_away])
    assert c.get_supervoxels(world.root, "segmentation", world.big).tolist() == [world.big]
    with pytest.raises(requests.HTTPError) as exc:             # merged away: no body of that id
        c.get_supervoxels(world.child, "segmentation", world.merged_away)
    assert exc.value.response.status_code == 404
    got = c.get_supervoxels_for_bodies(world.child, "segmentation",
                                       [world.big, world.small, world.absent[0]])
    assert set(got) == {world.big, world.small}          # the absent body (404) is left out
    assert got[world.small].tolist() == [world.small]


def test_point_cloud_uniform_sample_every_voxel(world):
    """density 1.0 with the exact sampler = the body's whole voxel set."""
    pts = dpc.uniform_sample(world.url, world.child, world.big, 1.0,
                             sample_from_rles_func=accurate_sample_rles)
    assert np.array_equal(sort_xyz(pts), world.voxels_xyz(world.child, world.big))


def test_point_cloud_uniform_sample_count_and_density(world):
    np.random.seed(3)
    node, body = world.child, world.big
    pts = dpc.uniform_sample(world.url, node, body, 500)                 # a count
    assert pts.shape == (500, 3) and in_body(world, node, body, pts).all()
    pts = dpc.uniform_sample(world.url, node, body, 0.05, sample_from_rles_func=accurate_sample_rles)
    assert len(pts) == round(world.count(node, body) * 0.05)            # a density
    assert len(np.unique(pts, axis=0)) == len(pts) and in_body(world, node, body, pts).all()
    df = dpc.uniform_sample(world.url, world.root, world.small, 50, output_format="dataframe")
    assert list(df.columns) == ["x", "y", "z"] and len(df) == 50
    assert in_body(world, world.root, world.small, df[["x", "y", "z"]].to_numpy()).all()


def test_point_cloud_uniform_sample_at_scale(world):
    """At scale s the points are scale-s voxels times 2^s: each must hit the body
    in the scale-s labels (2x mode of supervoxels, mapped)."""
    np.random.seed(4)
    node, body = world.child, world.big
    for scale in (1, 2):
        pts = dpc.uniform_sample(world.url, node, body, 1.0, scale=scale,
                                 sample_from_rles_func=accurate_sample_rles)
        assert (pts % (1 << scale) == 0).all()
        assert np.array_equal(sort_xyz(pts >> scale), world.voxels_xyz(node, body, scale)), scale


def test_point_cloud_uniform_auto_scale(world):
    np.random.seed(5)
    node, body = world.child, world.big
    n = world.count(node, body)
    count, density = 300, 0.03
    scaling = n / (count / density)
    want_scale = 0 if scaling <= 1 else int(np.floor(np.log2(scaling)))
    assert want_scale >= 1, "choose count/density so that a downsampled level is used"
    pts = dpc.uniform_auto_scale(world.url, node, body, count, density=density)
    assert pts.shape == (count, 3)
    assert (pts % (1 << want_scale) == 0).all()
    assert in_body(world, node, body, pts >> want_scale, scale=want_scale).all()


def test_point_cloud_sample_for_bodies(world):
    np.random.seed(6)
    node = world.child
    bodies = [world.big, world.small, world.merged_away, world.absent[0]]
    got = dpc.sample_for_bodies(world.url, node, "segmentation", bodies, 100)
    assert set(got) == {world.big, world.small}        # merged-away and absent ids: 404, left out
    for body, pts in got.items():
        assert pts.shape == (100, 3) and in_body(world, node, body, pts).all(), body


def test_point_cloud_supervoxel_sample(world):
    np.random.seed(8)
    pts = dpc.uniform_sample(world.url, world.child, world.merged_away, 1.0, supervoxels=True,
                             sample_from_rles_func=accurate_sample_rles)
    assert np.array_equal(sort_xyz(pts), world.voxels_xyz(world.root, world.merged_away))
