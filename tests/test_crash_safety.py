"""kill -9 at any point loses nothing committed and leaves no half-applied change.

A child Python process opens a store with `Dvid(path)` and runs a seeded
workload (grayscale writes of random boxes, commits, a same-branch child and a
named branch, a merge of the two, label writes, label merges and splits, and
`dvidfs.transfer.import_volume` of a .npy).  After each operation *returns* it
appends "<index> <op>" to a journal (O_APPEND, fsync).  The parent kills it
with SIGKILL after a seeded random delay, reopens the store and compares every
node with an independent numpy model replayed from the same seed:

* every operation the journal records as done is fully visible: voxels of
  every node, supervoxels and bodies, body sizes (label index), mutation
  records, extents, nodes (locked, parents, branch names, branch tips);
* the operation in flight (the one after the last journal line) is applied
  completely or not at all: the store equals the model either before or after
  it.  The exception is `import_volume`, documented as atomic per slab ("a
  failure part-way leaves the earlier slabs written"): any whole-slab prefix
  of the import is accepted, never part of a slab;
* every node's data reads without errors (no half-written block).

Data writes are applied with sync=False: after kill -9 (unlike an OS crash)
they must survive, since LevelDB hands each write batch to the kernel before
`apply` returns.  Half of the trials run the child with a 64 KiB LevelDB write
buffer so memtable flushes and compactions happen during the workload.

A last test kills a real FUSE mount (`dvidfs mount -f`) while a shell copies
PNG slices into an open node, commits it and branches, and checks that every
slice `cp` reported stored is stored exactly.

`DVIDFS_CRASH_TRIALS=N` runs N killed trials instead of the default 18.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from dvidfs.core import Dvid
from mounting import is_mounted, mounted

N_TRIALS = int(os.environ.get("DVIDFS_CRASH_TRIALS", "18"))

# ---------------------------------------------------------------------------
# The workload and its model: plain numpy, no dvidfs.  The child runs this
# source to build its plan; the parent runs the same source to replay it.
# ---------------------------------------------------------------------------
_WORKLOAD = textwrap.dedent(r'''
    import copy as _copy
    import os as _os
    import struct as _struct

    import numpy as np

    REPO = "crash"
    DLO = (-8, -8, -8)              # x, y, z of the modelled domain's first voxel
    DSIZE = (48, 40, 32)            # x, y, z
    SHAPE = (DSIZE[2], DSIZE[1], DSIZE[0])
    XCUT = 16                       # branches write x < XCUT (master side) / x >= XCUT (branch a)
    GRAY_BLOCK, LABEL_BLOCK = 8, 16
    BIG = 2**40 + 7                 # a label id far above the small ones


    def ref_rles(mask, offset):
        """DVID sparsevol bytes of a [z, y, x] mask whose first voxel is at offset
        (x, y, z): maximal x runs in z, y, x order; header 0,3,0,0, uint32 0,
        uint32 span count, then int32 x, y, z, length per run."""
        m = np.asarray(mask, bool)
        pad = np.zeros(m.shape[:2] + (m.shape[2] + 2,), np.int8)
        pad[:, :, 1:-1] = m
        d = np.diff(pad, axis=2)
        zs, ys, starts = np.nonzero(d == 1)
        ze, ye, ends = np.nonzero(d == -1)
        assert (zs == ze).all() and (ys == ye).all()
        spans = b"".join(_struct.pack("<iiii", int(x) + offset[0], int(y) + offset[1], int(z) + offset[2],
                                      int(e - x))
                         for z, y, x, e in zip(zs, ys, starts, ends))
        return bytes([0, 3, 0, 0]) + _struct.pack("<II", 0, len(zs)) + spans


    def dom(offset, size):
        """numpy slices of the domain array for a box (x, y, z offset and size)."""
        return tuple(slice(o - d, o - d + s) for o, d, s in
                     zip(offset[::-1], DLO[::-1], size[::-1]))


    def union(a, b):
        if a is None:
            return b
        return (tuple(map(min, a[0], b[0])), tuple(map(max, a[1], b[1])))


    def import_slabs(op):
        """(z0, z1) ranges of the array that import_volume writes as one slab each:
        cut where offset z + index falls on a grayscale block boundary."""
        nz, out, z = op["arr"].shape[0], [], 0
        while z < nz:
            end = z + 1
            while end < nz and (op["offset"][2] + end) % GRAY_BLOCK:
                end += 1
            out.append((z, end))
            z = end
        return out


    class Model:
        """What the store must hold: per node a uint8 grayscale array, a uint64
        supervoxel array, a supervoxel -> body dict, the mutation records it sees
        and the extents of each instance; the nodes' DAG facts."""

        def __init__(self):
            self.repo = False
            self.instances = {}     # name -> (typename, block size)
            self.nodes = {}         # note -> {"locked", "parents", "branch"}, creation order
            self.gray, self.sv, self.map, self.muts, self.ext = {}, {}, {}, {}, {}
            self.repo_max = 0       # largest label id ever written: split ids come from above it
            self.seq = 0            # mutation counter (repo-wide)

        def copy(self):
            return _copy.deepcopy(self)

        def body_view(self, note):
            sv, m = self.sv[note], self.map[note]
            out = sv.copy()
            for s, b in m.items():
                out[sv == s] = b
            return out

        def body_sizes(self, note):
            bv = self.body_view(note)
            ids, counts = np.unique(bv[bv != 0], return_counts=True)
            return {int(i): int(c) for i, c in zip(ids, counts)}

        def _new_node(self, note, parents, branch):
            self.nodes[note] = {"locked": False, "parents": list(parents), "branch": branch}

        def ancestors(self, note):
            out = {note}
            for p in self.nodes[note]["parents"]:
                out |= self.ancestors(p)
            return out

        def apply(self, op, slabs=None):
            """Apply one operation; for an import, only its first `slabs` slabs if given."""
            k = op["op"]
            if k == "repo":
                self.repo = True
                self._new_node("root", [], "")
                self.gray["root"] = np.zeros(SHAPE, np.uint8)
                self.sv["root"] = np.zeros(SHAPE, np.uint64)
                self.map["root"], self.muts["root"] = {}, []
                self.ext["root"] = {"gray": None, "seg": None}
            elif k == "instance":
                self.instances[op["name"]] = (op["type"], op["block"])
            elif k == "gwrite":
                n = op["node"]
                self.gray[n][dom(op["offset"], op["size"])] = op["arr"]
                self._grow(n, "gray", op["offset"], op["size"])
            elif k == "lwrite":
                n = op["node"]
                self.sv[n][dom(op["offset"], op["size"])] = op["arr"]
                self.repo_max = max(self.repo_max, int(op["arr"].max()))
                self._grow(n, "seg", op["offset"], op["size"])
            elif k == "import":
                n, (ox, oy, oz) = op["node"], op["offset"]
                for z0, z1 in import_slabs(op)[:slabs]:
                    part = op["arr"][z0:z1]
                    size = (part.shape[2], part.shape[1], part.shape[0])
                    self.gray[n][dom((ox, oy, oz + z0), size)] = part
                    self._grow(n, "gray", (ox, oy, oz + z0), size)
            elif k == "commit":
                self.nodes[op["node"]]["locked"] = True
            elif k == "branch":
                p, n = op["parent"], op["note"]
                self._new_node(n, [p], op["name"] if op["name"] else self.nodes[p]["branch"])
                self.gray[n], self.sv[n] = self.gray[p].copy(), self.sv[p].copy()
                self.map[n], self.muts[n] = dict(self.map[p]), list(self.muts[p])
                self.ext[n] = dict(self.ext[p])
            elif k == "merge":
                ps, n = op["parents"], op["note"]
                common = set.intersection(*(self.ancestors(p) for p in ps))
                base = [b for b in self.nodes if b in common][-1]   # newest common ancestor
                self._new_node(n, ps, self.nodes[ps[0]]["branch"])
                g, s, m = self.gray[base].copy(), self.sv[base].copy(), dict(self.map[base])
                recs = {}
                for p in ps:
                    d = self.gray[p] != self.gray[base]
                    g[d] = self.gray[p][d]
                    d = self.sv[p] != self.sv[base]
                    s[d] = self.sv[p][d]
                    m.update({a: b for a, b in self.map[p].items() if self.map[base].get(a) != b})
                    recs.update({r[0]: r for r in self.muts[p]})
                self.gray[n], self.sv[n], self.map[n] = g, s, m
                self.muts[n] = [recs[i] for i in sorted(recs)]
                self.ext[n] = {i: None for i in ("gray", "seg")}
                for p in ps:
                    for i in ("gray", "seg"):
                        if self.ext[p][i] is not None:
                            self.ext[n][i] = union(self.ext[n][i], self.ext[p][i])
            elif k == "lmerge":
                n, t, others = op["node"], op["target"], op["others"]
                m = self.map[n]
                for s in set(np.unique(self.sv[n]).tolist()) | set(m):
                    if m.get(s, s) in others:
                        m[s] = t
                self._log(n, {"Action": "merge", "Target": t, "Labels": list(others)})
            elif k == "split":
                n = op["node"]
                new = self.repo_max + 1
                region = self.sv[n][dom(op["moff"], op["msize"])]
                region[op["mask"]] = new
                self.repo_max = new
                self._log(n, {"Action": "split", "Target": op["body"], "NewLabel": new,
                              "Voxels": int(op["mask"].sum())})
            else:
                raise AssertionError(f"unknown op {k}")

        def _grow(self, n, inst, offset, size):
            box = (tuple(offset), tuple(o + s for o, s in zip(offset, size)))
            self.ext[n] = dict(self.ext[n])
            self.ext[n][inst] = union(self.ext[n][inst], box)

        def _log(self, n, rec):
            self.seq += 1
            self.muts[n].append((self.seq, n, rec))


    def _box(rng, xlo=DLO[0], xhi=DLO[0] + DSIZE[0], most=20):
        lo, hi = (xlo, DLO[1], DLO[2]), (xhi, DLO[1] + DSIZE[1], DLO[2] + DSIZE[2])
        size = tuple(int(rng.integers(1, min(most, h - l) + 1)) for l, h in zip(lo, hi))
        off = tuple(int(rng.integers(l, h - s + 1)) for l, h, s in zip(lo, hi, size))
        return off, size


    def make_plan(seed, workdir=None):
        """The workload: a list of operation dicts, the same for the same seed.
        Operands of label merges and splits are chosen from the model's state,
        so every operation is valid.  With `workdir`, the .npy files the imports
        read are written there."""
        rng = np.random.default_rng(seed)
        m, ops = Model(), []

        def add(op):
            m.apply(op)
            ops.append(op)

        def gwrite(n, **region):
            off, size = _box(rng, **region)
            add({"op": "gwrite", "node": n, "offset": off, "size": size,
                 "arr": rng.integers(1, 256, size[::-1], dtype=np.uint8)})

        def lwrite(n, **region):
            off, size = _box(rng, **region)
            ids = [int(i) for i in rng.integers(1, 12, 2)]
            if rng.random() < 0.15:
                ids[0] = BIG + int(rng.integers(0, 3))
            arr = np.full(size[::-1], ids[0], np.uint64)
            sub = tuple(slice(int(a), int(a) + int(rng.integers(1, s - a + 1)))
                        for a, s in ((int(rng.integers(0, s)), s) for s in arr.shape))
            arr[sub] = 0 if rng.random() < 0.25 else ids[1]   # sometimes erase (index goes down)
            add({"op": "lwrite", "node": n, "offset": off, "size": size, "arr": arr})

        def lmerge(n):
            bodies = sorted(m.body_sizes(n))
            if len(bodies) < 2:
                return
            pick = [int(b) for b in rng.permutation(bodies)[:int(rng.integers(2, 4))]]
            add({"op": "lmerge", "node": n, "target": pick[0], "others": pick[1:]})

        def split(n):
            bv = m.body_view(n)
            sizes = m.body_sizes(n)
            if not sizes:
                return
            body = int(rng.choice(sorted(sizes)))
            zs, ys, xs = np.nonzero(bv == body)
            i = int(rng.integers(len(zs)))
            c, half = (zs[i], ys[i], xs[i]), rng.integers(1, 7, 3)
            lo = [max(0, int(a - h)) for a, h in zip(c, half)]
            hi = [min(s, int(a + h) + 1) for a, h, s in zip(c, half, SHAPE)]
            mask = bv[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] == body
            moff = (lo[2] + DLO[0], lo[1] + DLO[1], lo[0] + DLO[2])
            msize = (hi[2] - lo[2], hi[1] - lo[1], hi[0] - lo[0])
            add({"op": "split", "node": n, "body": body, "moff": moff, "msize": msize, "mask": mask,
                 "rles": ref_rles(mask, moff)})

        def imp(n, k, z0, nz):
            ny, nx = int(rng.integers(4, 20)), int(rng.integers(4, 30))
            off = (int(rng.integers(DLO[0], DLO[0] + DSIZE[0] - nx + 1)),
                   int(rng.integers(DLO[1], DLO[1] + DSIZE[1] - ny + 1)), z0)
            arr = rng.integers(1, 256, (nz, ny, nx), dtype=np.uint8)
            path = None
            if workdir is not None:
                path = _os.path.join(workdir, f"import{k}.npy")
                np.save(path, arr)
            add({"op": "import", "node": n, "offset": off, "arr": arr, "path": path})

        left, right = {"xhi": XCUT}, {"xlo": XCUT}
        add({"op": "repo"})
        add({"op": "instance", "name": "gray", "type": "grayscale", "block": GRAY_BLOCK})
        add({"op": "instance", "name": "seg", "type": "labels", "block": LABEL_BLOCK})
        for _ in range(3):
            gwrite("root")
            lwrite("root")
            lwrite("root")
        imp("root", 0, -5, 14)                  # three slabs: z -5..-1, 0..7, 8
        lmerge("root")
        split("root")
        gwrite("root")
        lwrite("root")
        split("root")
        lmerge("root")
        add({"op": "commit", "node": "root"})
        add({"op": "branch", "parent": "root", "name": None, "note": "m1"})   # next master version
        add({"op": "branch", "parent": "root", "name": "a", "note": "a"})     # named branch
        for _ in range(3):                     # separate regions: the merge has no conflicts
            gwrite("m1", **left)
            gwrite("a", **right)
            lwrite("m1", **left)
            lwrite("a", **right)
        add({"op": "commit", "node": "m1"})
        add({"op": "commit", "node": "a"})
        add({"op": "merge", "parents": ["m1", "a"], "note": "m"})
        lmerge("m")
        split("m")
        gwrite("m")
        lwrite("m")
        split("m")
        imp("m", 1, 3, 18)                      # three slabs: z 3..7, 8..15, 16..20
        lmerge("m")
        add({"op": "commit", "node": "m"})
        add({"op": "branch", "parent": "m", "name": None, "note": "m2"})
        gwrite("m2")
        lwrite("m2")
        lmerge("m2")
        split("m2")                             # m2 stays open
        return ops
''')

_RUNNER = textwrap.dedent(r'''
    import sys
    import time

    seed, store_path, journal_path, workdir = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    plan = make_plan(seed, workdir)

    from dvidfs.core import Dvid
    from dvidfs.transfer import import_volume

    s = Dvid(store_path)
    fd = _os.open(journal_path, _os.O_WRONLY | _os.O_APPEND | _os.O_CREAT, 0o644)


    def journal(line):
        _os.write(fd, (line + "\n").encode())
        _os.fsync(fd)


    nodes = {}
    t0 = time.monotonic()
    journal("ready")
    for i, op in enumerate(plan):
        k = op["op"]
        n = nodes.get(op.get("node"))
        if k == "repo":
            nodes["root"] = s.node(s.new_repo(REPO).root)
        elif k == "instance":
            s.new_instance(nodes["root"], op["name"], op["type"], block_size=op["block"])
        elif k == "gwrite":
            s.data(n, "gray").write(n, op["offset"], op["arr"])
        elif k == "lwrite":
            s.data(n, "seg").write(n, op["offset"], op["arr"])
        elif k == "import":
            import_volume(s.data(n, "gray"), n, op["path"], op["offset"])
        elif k == "commit":
            s.commit(n)
        elif k == "branch":
            nodes[op["note"]] = s.branch(nodes[op["parent"]], op["name"], note=op["note"])
        elif k == "merge":
            nodes[op["note"]] = s.merge([nodes[p] for p in op["parents"]], note=op["note"])
        elif k == "lmerge":
            s.data(n, "seg").merge(n, op["target"], op["others"])
        elif k == "split":
            s.data(n, "seg").split(n, op["body"], op["rles"])
        journal(f"{i} {k}")
    journal(f"done {time.monotonic() - t0:.4f}")
    s.close()
''')

_CHILD = _WORKLOAD + _RUNNER
W: dict = {}
exec(compile(_WORKLOAD, "<crash workload>", "exec"), W)
Model, make_plan, import_slabs = W["Model"], W["make_plan"], W["import_slabs"]
DLO, DSIZE = W["DLO"], W["DSIZE"]


# ---------------------------------------------------------------------------
# Comparing a reopened store with a model state
# ---------------------------------------------------------------------------
def _diff(what: str, got: np.ndarray, want: np.ndarray) -> list[str]:
    if got.shape != want.shape:
        return [f"{what}: shape {got.shape}, model {want.shape}"]
    bad = np.argwhere(got != want)
    if not len(bad):
        return []
    z, y, x = bad[0]
    return [f"{what}: {len(bad)} voxel(s) differ, first at x,y,z=({x + DLO[0]},{y + DLO[1]},{z + DLO[2]}): "
            f"store {got[z, y, x]}, model {want[z, y, x]}"]


def store_errors(s: Dvid, m) -> list[str]:
    """Everything in which the store differs from model state `m` (empty: equal).
    Every node's data is read in full, so an unreadable block raises."""
    repos = s.repos()
    if not m.repo:
        return [f"repos {[r.alias for r in repos]} exist before new_repo returned"] if repos else []
    if [r.alias for r in repos] != [W["REPO"]]:
        return [f"repos are {[r.alias for r in repos]}, expected [{W['REPO']!r}]"]
    repo = repos[0]
    errs: list[str] = []
    by_note = {}
    for n in s.repo_nodes(repo):
        if n.note in by_note:
            errs.append(f"two nodes with note {n.note!r}")
        by_note[n.note] = n
    if sorted(by_note) != sorted(m.nodes):
        return errs + [f"nodes (by note) {sorted(by_note)}, model {sorted(m.nodes)}"]
    uuid_note = {n.uuid: note for note, n in by_note.items()}
    for note, want in m.nodes.items():
        n = by_note[note]
        got = {"locked": n.locked, "parents": [uuid_note.get(p, p) for p in n.parents],
               "branch": n.branch_name}
        exp = dict(want, branch=want["branch"] or "master")
        if got != exp:
            errs.append(f"node {note}: {got}, model {exp}")
    tips = {b: uuid_note.get(n.uuid) for b, n in s.branches(repo).items()}
    want_tips = {}
    for note, d in m.nodes.items():      # creation order: the last node of a branch is its tip
        want_tips[d["branch"] or "master"] = note
    if tips != want_tips:
        errs.append(f"branch tips {tips}, model {want_tips}")

    want_inst = {name: (t, [b] * 3) for name, (t, b) in m.instances.items()}
    for note in m.nodes:
        node = by_note[note]
        insts = s.instances(node)
        got_inst = {name: (i.typename, i.config.get("BlockSize")) for name, i in insts.items()}
        if got_inst != want_inst:
            errs.append(f"node {note}: instances {got_inst}, model {want_inst}")
            continue
        view = s.view(node)
        for name in insts:
            data = s.data(node, name)
            ext = data.extents(view)
            got_ext = None if ext is None else (tuple(ext.lo), tuple(ext.hi))
            if got_ext != m.ext[note][name]:
                errs.append(f"node {note}/{name}: extents {got_ext}, model {m.ext[note][name]}")
        if "gray" in insts:
            g = s.data(node, "gray")
            errs += _diff(f"node {note}/gray", g.read(view, DLO, DSIZE), m.gray[note])
            ext = m.ext[note]["gray"]
            if ext is not None:               # the slice path (read-ahead layers) agrees too
                z = (ext[0][2] + ext[1][2]) // 2
                (x0, y0, _), (x1, y1, _) = ext
                want = m.gray[note][z - DLO[2], y0 - DLO[1]:y1 - DLO[1], x0 - DLO[0]:x1 - DLO[0]]
                got = s.read_slice(node, g, "xy", z)
                if got.shape != want.shape or not np.array_equal(got, want):
                    errs.append(f"node {note}/gray: xy slice {z} differs from the model")
        if "seg" in insts:
            seg = s.data(node, "seg")
            errs += _diff(f"node {note}/seg supervoxels", seg.read(view, DLO, DSIZE, supervoxels=True),
                          m.sv[note])
            errs += _diff(f"node {note}/seg bodies", seg.read(view, DLO, DSIZE), m.body_view(note))
            sizes = m.body_sizes(note)
            got_bodies = [int(b) for b in seg.bodies(view)]
            if got_bodies != sorted(sizes):
                errs.append(f"node {note}/seg: bodies {got_bodies}, model {sorted(sizes)}")
            got_sizes = {b: seg.size(view, b) for b in got_bodies}   # from the label index
            if got_sizes != sizes:
                errs.append(f"node {note}/seg: body sizes {got_sizes}, model {sizes}")
            recs = seg.mutations(view)
            ids = [r["MutationID"] for r in recs]
            got_recs = [({k: v for k, v in r.items() if k not in ("MutationID", "UUID", "Timestamp")},
                         uuid_note.get(r["UUID"], r["UUID"])) for r in recs]
            want_recs = [(rec, made_in) for _, made_in, rec in m.muts[note]]
            if got_recs != want_recs or ids != sorted(set(ids)):
                errs.append(f"node {note}/seg: mutations {got_recs} (ids {ids}), model {want_recs}")
    return errs


def _candidates(plan, done: int):
    """Model states the store may be in when ops 0..done-1 returned and op
    `done` (if any) was in flight: before it, or after it (for an import: after
    any number of its slabs)."""
    m = Model()
    for op in plan[:done]:
        m.apply(op)
    if done >= len(plan):
        return [("all done", m)]
    op = plan[done]
    out = [(f"before op {done} ({op['op']})", m)]
    if op["op"] == "import":
        for j in range(1, len(import_slabs(op)) + 1):
            after = m.copy()
            after.apply(op, slabs=j)
            out.append((f"op {done} (import) after {j} slab(s)", after))
    else:
        after = m.copy()
        after.apply(op)
        out.append((f"after op {done} ({op['op']})", after))
    return out


# ---------------------------------------------------------------------------
# Running the child
# ---------------------------------------------------------------------------
def _read_journal(path) -> list[str]:
    try:
        with open(path, "rb") as f:
            text = f.read().decode()
    except FileNotFoundError:
        return []
    lines = text.split("\n")
    return lines[:-1]        # a last line without "\n" was not finished


def _run_child(tmp_path, seed: int, kill_after: float | None, small_buffer: bool):
    """Run the workload in a child; kill it `kill_after` s after it reported
    "ready" (None: let it finish).  Returns (return code, journal lines, log)."""
    store, journal, work = tmp_path / "store", tmp_path / "journal", tmp_path / "work"
    work.mkdir()
    Dvid.init(store).close()
    env = dict(os.environ)
    env.pop("DVIDFS_LEVELDB_WRITE_BUFFER", None)
    if small_buffer:   # memtable flushes and compactions happen during the workload
        env["DVIDFS_LEVELDB_WRITE_BUFFER"] = "64K"
    log_path = tmp_path / "child.log"
    with open(log_path, "wb") as log:
        args = [str(seed), str(store), str(journal), str(work)]
        proc = subprocess.Popen([sys.executable, "-c", _CHILD, *args],
                                stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env)
        try:
            deadline = time.monotonic() + 60
            while not _read_journal(journal)[:1] == ["ready"]:
                if proc.poll() is not None or time.monotonic() > deadline:
                    break
                time.sleep(0.0005)
            if kill_after is not None and proc.poll() is None:
                time.sleep(kill_after)
                proc.send_signal(signal.SIGKILL)
            rc = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return rc, _read_journal(journal), log_path.read_text(errors="replace")


def _completed(plan, lines: list[str], log: str) -> int:
    """How many operations the journal records as returned (they are 0..n-1)."""
    assert lines and lines[0] == "ready", f"the child never got ready:\n{log[-3000:]}"
    done = 0
    for line in lines[1:]:
        if line.startswith("done"):
            assert done == len(plan), f"'done' after {done} of {len(plan)} ops"
            continue
        i, kind = line.split()
        assert int(i) == done and plan[done]["op"] == kind, \
            f"journal line {line!r}: expected op {done} {plan[done]['op']} (child and parent plans differ?)"
        done += 1
    return done


def _verify(store_path, plan, done: int) -> str:
    """Reopen the store and require it to equal one of the candidate states;
    returns the name of the one it equals."""
    report = []
    with Dvid(store_path) as s:
        for name, m in _candidates(plan, done):
            errs = store_errors(s, m)
            if not errs:
                return name
            report.append(f"-- not {name}:\n   " + "\n   ".join(errs[:12]))
    raise AssertionError(f"after kill -9 with {done} op(s) journaled as done, the store matches no allowed "
                         "state (committed work lost, or a half-applied change):\n" + "\n".join(report))


@pytest.fixture(scope="module")
def workload_runs(tmp_path_factory):
    """Two full runs without a kill (seed 0; default and small LevelDB write
    buffer): their directories, and how long the workload takes (the faster
    run: the first one in a session also warms disk and import caches)."""
    runs, seconds = [], []
    for small in (False, True):
        tmp = tmp_path_factory.mktemp("full")
        rc, lines, log = _run_child(tmp, 0, None, small_buffer=small)
        assert rc == 0, f"workload child failed (rc {rc}):\n{log[-4000:]}"
        assert lines[-1].startswith("done"), lines[-3:]
        runs.append(tmp)
        seconds.append(float(lines[-1].split()[1]))
    return runs, min(seconds)


def test_workload_without_kill_matches_model(workload_runs):
    """The uninterrupted workload leaves exactly the model's final state
    (so the model and the checks agree with the store at all)."""
    runs, seconds = workload_runs
    plan = make_plan(0)
    kinds = {op["op"] for op in plan}
    assert kinds == {"repo", "instance", "gwrite", "lwrite", "import", "commit", "branch", "merge",
                     "lmerge", "split"}, kinds
    for tmp in runs:
        done = _completed(plan, _read_journal(tmp / "journal"), "")
        assert done == len(plan)
        assert _verify(tmp / "store", plan, done) == "all done"
    print(f"workload: {len(plan)} ops in {seconds:.3f} s")


@pytest.mark.parametrize("trial", range(N_TRIALS))
def test_kill9_loses_nothing_committed_and_applies_nothing_by_half(tmp_path, workload_runs, trial):
    _, seconds = workload_runs
    rng = np.random.default_rng(10_000 + trial)
    if trial % 4 == 0:   # log-uniform: early kills (repo, instances, first writes) get their share
        delay = 0.002 * (max(seconds, 0.003) / 0.002) ** rng.uniform(0, 1)
    else:
        delay = rng.uniform(0.002, seconds * 1.05)
    seed = 1 + trial
    rc, lines, log = _run_child(tmp_path, seed, delay, small_buffer=trial % 2 == 1)
    assert rc in (0, -signal.SIGKILL), f"workload child failed by itself (rc {rc}):\n{log[-4000:]}"
    plan = make_plan(seed)
    done = _completed(plan, lines, log)
    state = _verify(tmp_path / "store", plan, done)
    print(f"trial {trial}: kill after {delay * 1000:.1f} ms, {done}/{len(plan)} ops journaled, "
          f"store equals the model {state}")


# ---------------------------------------------------------------------------
# kill -9 of a real FUSE mount while a shell writes slices, commits, branches
# ---------------------------------------------------------------------------
FZ, FH, FW = 40, 24, 40          # slices of the mounted volume (z) and their size


@pytest.mark.mount
def test_kill9_of_mount_keeps_every_slice_cp_reported_stored(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(77)
    store, mnt, src = tmp_path / "store", tmp_path / "mnt", tmp_path / "src"
    src.mkdir()
    initial = rng.integers(0, 256, (FZ, FH, FW), dtype=np.uint8)
    with Dvid.init(store) as s:
        root = s.node(s.new_repo("em").root)
        s.new_instance(root, "gray", "grayscale", block_size=16).write(root, (0, 0, 0), initial)
        root_uuid = root.uuid
    new = rng.integers(0, 256, (FZ, FH, FW), dtype=np.uint8)
    for z in range(FZ):
        Image.fromarray(new[z]).save(src / f"{z}.png")
    first = 10            # slices 0..9 into the root, then commit, branch, slices 10.. into the branch
    journal = tmp_path / "journal"
    steps = []
    for z in range(FZ):
        node = root_uuid if z < first else "next"
        steps.append(f'cp "{src}/{z}.png" "{mnt}/em/{node}/gray/xy/{z:05d}.png" '
                     f'&& echo "slice {node} {z}" >> "{journal}" || exit 1')
        if z == first - 1:
            steps.append(f'echo "first half" > "{mnt}/em/{root_uuid}/.dvid/commit" '
                         f'&& echo commit >> "{journal}" || exit 1')
            steps.append(f'echo next > "{mnt}/em/{root_uuid}/.dvid/branch" '
                         f'&& echo branch >> "{journal}" || exit 1')
    steps.append(f'echo done >> "{journal}"')
    kill_at = int(rng.integers(14, 32))         # journal lines before the kill: mid branch slices
    extra = rng.uniform(0, 0.03)

    with mounted(store, mnt) as proc:
        writer = subprocess.Popen(["sh", "-c", "\n".join(steps)], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            while len(_read_journal(journal)) < kill_at and writer.poll() is None:
                assert time.monotonic() < deadline, "writer made no progress in 60 s"
                time.sleep(0.001)
            time.sleep(extra)
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(timeout=30) == -signal.SIGKILL
        finally:
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
            try:
                writer.wait(timeout=30)
            except subprocess.TimeoutExpired:
                writer.kill()
                writer.wait()
    assert not is_mounted(mnt)
    lines = _read_journal(journal)
    assert "done" not in lines, "the writer finished before the kill: nothing was tested"

    ok = {(l.split()[1], int(l.split()[2])) for l in lines if l.startswith("slice ")}
    with Dvid(store) as s:        # the killed mount's lock is gone; its stale marker is harmless
        repo = s.repo("em")
        root = s.node_by_uuid(root_uuid)
        last = lines[-1] if lines else ""
        if "commit" in lines:
            assert root.locked, "the journal says the commit returned, the root is open"
        elif root.locked:   # only if the commit was in flight
            assert last == f"slice {root_uuid} {first - 1}", f"root committed, journal ends {last!r}"
        branches = s.branches(repo)
        if "branch" in lines:
            assert "next" in branches, "the journal says the branch returned, it does not exist"
        elif "next" in branches:
            assert last == "commit", f"branch exists, journal ends {last!r}"
        nodes = {root_uuid: root}
        if "next" in branches:
            assert branches["next"].parents == [root_uuid] and not branches["next"].locked
            nodes["next"] = branches["next"]
        assert sorted(s.branches(repo)) == sorted(["master"] + (["next"] if "next" in nodes else []))
        stored = {}
        for name, node in nodes.items():
            g = s.data(node, "gray")
            stored[name] = g.read(s.view(node), (0, 0, 0), (FW, FH, FZ))
            for plane, n in (("xy", FZ), ("xz", FH), ("yz", FW)):   # every slice path reads
                for c in range(0, n, 5):
                    s.read_slice(node, g, plane, c)
        applied_unjournaled = []
        for name, got in stored.items():
            for z in range(FZ):
                if name == "next" and z < first:       # inherited from the committed root
                    assert np.array_equal(got[z], stored[root_uuid][z]), f"slice {z} of next != root's"
                    continue
                if (name == root_uuid) != (z < first):  # never written in this node
                    assert np.array_equal(got[z], initial[z]), f"slice {z} of {name} changed"
                    continue
                if (name, z) in ok:
                    assert np.array_equal(got[z], new[z]), \
                        f"slice {z} of {name}: cp said stored, the store differs"
                elif np.array_equal(got[z], new[z]):
                    applied_unjournaled.append((name, z))
                else:
                    assert np.array_equal(got[z], initial[z]), \
                        f"slice {z} of {name} is neither the old nor the new image (half-applied)"
        # only the cp in flight may have landed without the writer hearing of it
        assert len(applied_unjournaled) <= 1, applied_unjournaled
    print(f"mount killed after {len(lines)} journal lines ({len(ok)} slices confirmed); "
          f"unconfirmed but stored: {applied_unjournaled}")
