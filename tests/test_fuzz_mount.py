"""Fuzz of a REAL mount (issue: "the mount never dies, never drops a write").

Hypothesis draws sequences of steps: names (huge, negative and Unicode ids,
NUL-free random bytes, 255-byte and longer names, `.` and `..`, spaces and
newlines, ImageJ names like `xy0003.png`, hidden temp names) looked up,
stat'ed, listed, created, renamed, unlinked, mkdir'ed and rmdir'ed in every
kind of directory (the top, a repo, open and committed nodes, `.dvid`,
instances, the xy/xz/yz planes of grayscale and labels, `xy-rgb`, `labels/`, a
body), and bytes written to every kind of writable file (slices, temp files,
`split`, the labels `merge`, and the `.dvid` commands commit, branch, merge,
newdata, note, log) in random chunkings: several writes, pwrites at random
offsets (past any limit too), truncations, fsync, then close.

After every syscall: the mount process is alive and `os.listdir(mnt)` works;
the call either succeeded or failed with an errno of the documented set (EIO is
a bug: `_never_escape` answers EIO only for an unexpected exception); and it
succeeded exactly when the model says the operation is valid.  After every
example the whole repo is read back and compared with the model: the DAG
(nodes, branches, info.json, note, log), the instances, every plane listing,
slices decoded with Pillow / tifffile against numpy, label bodies, sizes and
mutations.  Invalid writes (random bytes) must leave all of it as it was.

One mount per test function, shared by its examples.  Each example takes a
fresh repo from a pool built with `Dvid` before mounting (root committed with
`gray` uint8 and `seg` labels, 8³ blocks; an open child on branch `work`), so
examples never see each other's nodes or instances; the repos at the top
(mkdir there makes one) are shared and tracked across examples.

What the model cannot predict makes the example "lost" (`Lost`): a merge of
two nodes that both changed data since their common ancestor (merged or EBUSY
depending on blocks), a valid slice written far outside the extents, a UUID
prefix that may name a node made in the same syscall.  From there on only
liveness and errnos are checked (the fixed examples of CI lose none).  Which
upload is valid is the image codec's verdict (`decode_image`, tested on its
own in test_formats_images.py): here we test that the mount stores exactly
what it accepts, and nothing else.

`test_successful_closes_survive_a_remount` is the non-hypothesis half: one
write of every writable kind, closed with rc 0, is there after unmount and
remount; a name that could only live in RAM is refused at create.

The failing examples of the bugs this fuzz found stay as explicit examples
(`test_found_*`).  A bug found next: keep its example in a test marked
`xfail(strict=True)` and let the random fuzz step around it until it is fixed.
"""
from __future__ import annotations

import collections
import contextlib
import copy
import errno
import io
import json
import os
import re
import stat
import struct
from dataclasses import dataclass, field

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, Phase, event, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from dvidfs.core import Dvid
from dvidfs.formats.images import decode_image
from mounting import mounted
from reference import ref_rles

pytestmark = pytest.mark.mount

# ---------------------------------------------------------------------------- the store
SHAPE = (6, 12, 16)          # z, y, x: two 8³ blocks along y and x, one along z
BASE_GRAY = np.random.default_rng(16).integers(0, 256, SHAPE, dtype=np.uint8)
BASE_SEG = np.zeros(SHAPE, np.uint64)
BASE_SEG[:, :6] = 7
BASE_SEG[:, 6:] = 9
BASE_SEG[2:4, 2:4, 2:4] = 11   # a small body inside 7
NEW_IDS = (100, 101, 2**63 + 5, 2**64 - 1)   # ids a label slice may bring in

ALLOWED = frozenset({errno.ENOENT, errno.EINVAL, errno.EROFS, errno.EACCES, errno.EPERM, errno.EEXIST,
                     errno.EBUSY, errno.EFBIG, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG,
                     errno.EBADF, errno.ENOTEMPTY})

CONTROL = ("commit", "branch", "merge", "newdata", "note", "log", "info.json", "last-error")
# listed in .dvid too, not fuzzed (tests/test_tags.py, tests/test_resolve.py, test_cli_frictions.py's
# downres): the model has no tags, resolve or pyramids
CONTROL_LISTED = CONTROL + ("resolve", "conflicts", "tag", "downres")
BODY_FILES = ("bbox.json", "blocks.json", "size", "sparsevol", "sparsevol-coarse", "split", "supervoxels")
GRAY_PLANES = ("xy", "xz", "yz")
SEG_PLANES = ("xy", "xz", "yz", "xy-rgb", "xz-rgb", "yz-rgb", "xy-fiji", "xz-fiji", "yz-fiji")
FUSE_NAME_MAX = 1024          # the kernel refuses longer names (ENAMETOOLONG) before asking the mount
MAX_COMMAND = 1 << 20
LIMIT_SURE = 1 << 20          # an upload of at most this many bytes is never EFBIG (slice limits are larger)
LIMIT_NEVER = 1 << 30         # ... and one reaching this is always EFBIG (every slice limit is smaller)
GROW_MAX = 8                  # the model follows extents growing at most this far


# The model's own reading of the documented grammars (README, volumes.py).
SLICE_RE = re.compile(r"(-?[0-9]{1,10})\.(png|tif|tiff)")
ALIAS_RE = re.compile(r"[A-Za-z][A-Za-z0-9_ +-]*?([0-9]{1,10})\.(png|tif|tiff)")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}")
UUID_RE = re.compile(r"[0-9a-f]{32}")
PREFIX_RE = re.compile(r"[0-9a-f]{1,31}")
HEX_RE = re.compile(r"[0-9a-f]+")
REF_RE = re.compile(r"^(?P<prefix>[^:~]*)(?::(?P<branch>[^~]+))?(?:~(?P<back>\d+))?$")
LABEL_RE = re.compile(r"[0-9]{1,20}")


def slice_coord(name: str) -> int | None:
    m = SLICE_RE.fullmatch(name) or ALIAS_RE.fullmatch(name)
    if m is None:
        return None
    c = int(m.group(1))
    return c if -2**31 <= c < 2**31 else None


def is_temp(name: str) -> bool:
    return name.startswith(".") and name not in (".", "..")


def label_id(word: str) -> int | None:
    if not LABEL_RE.fullmatch(word):
        return None
    v = int(word)
    return v if 0 < v < 2**64 else None


def valid_name(name: str) -> bool:
    """Repo, branch and instance names."""
    return bool(NAME_RE.fullmatch(name)) and not UUID_RE.fullmatch(name)


def _build_pool(path, first: int, n: int) -> list[tuple[str, str, str]]:
    """Add repos fz<first>.. to the store at `path` (made if first == 0)."""
    out = []
    with (Dvid.init(path) if first == 0 else Dvid(path)) as s:
        for i in range(first, first + n):
            repo = s.new_repo(f"fz{i:04d}")
            root = s.node(repo.root)
            s.new_instance(root, "gray", "grayscale", block_size=8).write(root, (0, 0, 0), BASE_GRAY)
            s.new_instance(root, "seg", "labels", block_size=8).write(root, (0, 0, 0), BASE_SEG)
            s.commit(root, "base")
            work = s.branch(root, "work")
            out.append((repo.alias, root.uuid, work.uuid))
    return out


# ---------------------------------------------------------------------------- test-side codecs
def png_bytes(img: np.ndarray) -> bytes:
    b = io.BytesIO()
    Image.fromarray(img).save(b, format="PNG")
    return b.getvalue()


def tiff_bytes(img: np.ndarray) -> bytes:
    b = io.BytesIO()
    tifffile.imwrite(b, img)
    return b.getvalue()


def read_png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return np.asarray(im)


def rles_voxels(data: bytes):
    """Voxels (x, y, z) of a DVID binary sparsevol, or None if it is not one
    (an independent reading of the format: 12-byte header, int32 runs)."""
    if len(data) < 12:
        return None
    desc, dims, axis, _r, _v, count = struct.unpack_from("<BBBBII", data)
    if desc != 0 or dims != 3 or axis != 0 or len(data) - 12 != 16 * count:
        return None
    out = set()
    for i in range(count):
        x, y, z, n = struct.unpack_from("<iiii", data, 12 + 16 * i)
        if n <= 0 or x + n - 1 >= 2**31:
            return None
        if n > 10**6:
            return {"huge"}   # more voxels than any body here: refused, whatever they are
        out.update((x + j, y, z) for j in range(n))
    return out


# ---------------------------------------------------------------------------- steps (plain data)
# Directories and files are named relative to a node selector:
#   "/" the top, "repo" the example's repo, "W" the open `work` node, "R" the
#   committed root, "new" the newest node an example made (else W), "work" and
#   "master" the branch links, "Rp" the root through a UUID prefix.
# "#k" is the k-th body of the node (sorted), "@" the slice coordinate of
# the step (k-th slice of the plane, named in format `fmt`).
@dataclass(frozen=True)
class Raw:
    data: bytes


@dataclass(frozen=True)
class Img:
    """An image for the target plane: `variant` png | png16 | png16big | tiff |
    tiff16 | rgb | trunc | suffix; dh/dw change its shape."""

    seed: int
    variant: str = "png"
    dh: int = 0
    dw: int = 0


@dataclass(frozen=True)
class SplitOf:
    """A sparsevol for the target body: part | all | outside | empty | dup."""

    seed: int
    variant: str = "part"


@dataclass(frozen=True)
class Cmd:
    """A command text built from the example's state when the step runs:
    branch (fresh | same | taken | master | uuid), merge (node selectors),
    newdata (type, name kind, block size), bodies (tokens: "#k" or literal)."""

    kind: str
    args: tuple = ()
    newline: bool = True


@dataclass(frozen=True)
class Plan:
    """How content reaches the file: cut into pieces (per mille) written in
    order (seq) or pwritten last-first (rev); `junk` first, then ftruncate(0) +
    lseek(0); an fsync in the middle; then `tail` ops: ("pwrite", off, bytes),
    ("trunc", n), ("fsync",), ("write", bytes)."""

    cuts: tuple = ()
    order: str = "seq"
    junk: bytes = b""
    fsync_mid: bool = False
    tail: tuple = ()


@dataclass(frozen=True)
class Seq:
    """Steps that only mean something together (commit, then branch from it)."""

    steps: tuple


@dataclass(frozen=True)
class Stat:
    dir: tuple
    name: bytes


@dataclass(frozen=True)
class ListDir:
    dir: tuple


@dataclass(frozen=True)
class Read:
    file: tuple
    k: int = 0
    fmt: int = 0


@dataclass(frozen=True)
class MkDir:
    dir: tuple
    name: bytes


@dataclass(frozen=True)
class RmDir:
    dir: tuple
    name: bytes


@dataclass(frozen=True)
class Unlink:
    dir: tuple
    name: bytes


@dataclass(frozen=True)
class Rename:
    dir: tuple
    src: bytes
    dst_dir: tuple
    dst: bytes


@dataclass(frozen=True)
class Create:
    dir: tuple
    name: bytes
    content: object = Raw(b"")
    plan: Plan = Plan()
    excl: bool = False
    trunc: bool = False


@dataclass(frozen=True)
class Write:
    file: tuple
    content: object
    plan: Plan = Plan()
    k: int = 0
    fmt: int = 0
    trunc: bool = True
    creat: bool = False


@dataclass(frozen=True)
class TempToSlice:
    """rsync's pattern: write a hidden temp file, close, rename it onto a slice."""

    dir: tuple
    temp: bytes
    content: object
    target: bytes
    plan: Plan = Plan()


@dataclass(frozen=True)
class TempDance:
    """Keep temp `a` open while temp `b` is written and renamed over it (and
    `a` unlinked); then fstat, write and close the fd of `a`."""

    dir: tuple
    a: bytes
    b: bytes
    data_a: bytes
    data_b: bytes
    unlink: bool = False


# ---------------------------------------------------------------------------- the model
class Vol:
    """A volume as numpy [z, y, x] with its first voxel at `lo` (x, y, z)."""

    FIXED = {"xy": 2, "xz": 1, "yz": 0}

    def __init__(self, arr: np.ndarray, lo=(0, 0, 0)):
        self.arr, self.lo = arr, tuple(lo)

    @property
    def hi(self):
        z, y, x = self.arr.shape
        return (self.lo[0] + x, self.lo[1] + y, self.lo[2] + z)

    def coords(self, plane: str) -> range:
        f = self.FIXED[plane[:2]]
        return range(self.lo[f], self.hi[f])

    def shape(self, plane: str) -> tuple[int, int]:
        z, y, x = self.arr.shape
        return {"xy": (y, x), "xz": (z, x), "yz": (z, y)}[plane[:2]]

    def get(self, plane: str, c: int) -> np.ndarray:
        i = c - self.lo[self.FIXED[plane[:2]]]
        return {"xy": lambda: self.arr[i], "xz": lambda: self.arr[:, i, :],
                "yz": lambda: self.arr[:, :, i]}[plane[:2]]().copy()

    def put(self, plane: str, c: int, img: np.ndarray) -> bool:
        """Write a slice (extents grow along the plane's axis); False if the
        growth is farther than the model follows."""
        f = self.FIXED[plane[:2]]
        lo, hi = list(self.lo), list(self.hi)
        if c < lo[f] - GROW_MAX or c >= hi[f] + GROW_MAX:
            return False
        nlo, nhi = list(lo), list(hi)
        nlo[f], nhi[f] = min(lo[f], c), max(hi[f], c + 1)
        if (nlo, nhi) != (lo, hi):
            arr = np.zeros((nhi[2] - nlo[2], nhi[1] - nlo[1], nhi[0] - nlo[0]), self.arr.dtype)
            z0, y0, x0 = lo[2] - nlo[2], lo[1] - nlo[1], lo[0] - nlo[0]
            z, y, x = self.arr.shape
            arr[z0:z0 + z, y0:y0 + y, x0:x0 + x] = self.arr
            self.arr, self.lo = arr, tuple(nlo)
        i = c - self.lo[f]
        if plane[:2] == "xy":
            self.arr[i] = img
        elif plane[:2] == "xz":
            self.arr[:, i, :] = img
        else:
            self.arr[:, :, i] = img
        return True


class Labels:
    """Stored supervoxels, the sv -> body mapping of merges, the mutation log."""

    def __init__(self, vol: Vol):
        self.vol, self.mapping, self.mutations = vol, {}, []

    def mapped(self, arr: np.ndarray) -> np.ndarray:
        out = arr.copy()
        for sv, body in self.mapping.items():
            out[arr == np.uint64(sv)] = np.uint64(body)
        return out

    def bodies(self) -> list[int]:
        return sorted(int(b) for b in np.unique(self.mapped(self.vol.arr)) if b)

    def voxels(self, body: int) -> set:
        z, y, x = np.nonzero(self.mapped(self.vol.arr) == np.uint64(body))
        lx, ly, lz = self.vol.lo
        return {(int(a) + lx, int(b) + ly, int(c) + lz) for a, b, c in zip(x, y, z)}

    def size(self, body: int) -> int:
        return int((self.mapped(self.vol.arr) == np.uint64(body)).sum())


@dataclass(eq=False)
class NodeM:
    uuid: str | None            # None until learned (made by a command in the current syscall)
    branch: str
    parents: list
    gray: Vol | None = None
    seg: Labels | None = None
    locked: bool = False
    note: str = ""
    log: list = field(default_factory=list)
    children: list = field(default_factory=list)
    wrote: bool = False         # data changed in this node (merges: which side changed)


@dataclass(eq=False)
class Temp:
    data: bytearray             # an open fd keeps its Temp, whatever happens to the name


@dataclass(eq=False)
class Handle:
    kind: str                   # upload | now | scratch
    target: tuple
    data: bytearray = field(default_factory=bytearray)
    limit: int = 0
    dirty: bool = False
    created: bool = False       # a slice made by create: pending (size = what is buffered) until stored
    pending: bytearray = field(default_factory=bytearray)
    temp: Temp | None = None


class Lost(Exception):
    """The model cannot predict this (see the module docstring)."""


class Model:
    """One example's repo."""

    def __init__(self, alias: str, root: str, work: str, repos: set):
        self.alias, self.repos = alias, repos
        self.R = NodeM(root, "master", [], Vol(BASE_GRAY.copy()), Labels(Vol(BASE_SEG.copy())),
                       locked=True, note="base")
        self.W = NodeM(work, "work", [self.R], copy.deepcopy(self.R.gray), copy.deepcopy(self.R.seg))
        self.R.children.append(self.W)
        self.nodes = [self.R, self.W]
        self.instances = {"gray": ("grayscale", self.R), "seg": ("labels", self.R)}
        self.temps: dict[tuple, dict[str, Temp]] = {}
        self.placeholders: list[NodeM] = []
        self.splits: list[tuple] = []      # (node, body, voxels) awaiting their new label
        self.max_label = int(BASE_SEG.max())   # largest label written in any node: a split takes the next
        self.fresh = 0
        self.lost: str | None = None
        self.effects: collections.Counter = collections.Counter()

    # ------------------------------------------------------------ DAG
    def ancestors(self, n: NodeM) -> list[NodeM]:
        seen, todo = [], [n]
        while todo:
            x = todo.pop()
            if x not in seen:
                seen.append(x)
                todo.extend(x.parents)
        return seen

    def branches(self) -> dict[str, NodeM]:
        tips = {}
        for n in self.nodes:
            tips[n.branch] = n
        return tips

    def visible(self, n: NodeM) -> dict[str, str]:
        anc = self.ancestors(n)
        return {name: t for name, (t, c) in self.instances.items() if c in anc}

    def newest(self) -> NodeM:
        made = [n for n in self.nodes[2:] if n.uuid is not None]
        return made[-1] if made else self.W

    def data(self, n: NodeM, inst: str):
        return n.gray if inst == "gray" else n.seg.vol if inst == "seg" else None

    # ------------------------------------------------------------ names
    def child(self, ent: tuple, name: str):
        """The entity `name` names in directory `ent`, or None."""
        kind = ent[0]
        if kind == "root":
            return ("repo",) if name == self.alias else ("other-repo", name) if name in self.repos else None
        if kind == "repo":
            node = next((n for n in self.nodes if n.uuid == name), None) if UUID_RE.fullmatch(name) else None
            if node is not None:
                return ("node", node)
            if name in self.branches():
                return ("link", name)
            if PREFIX_RE.fullmatch(name):
                found = [n for n in self.nodes if n.uuid and n.uuid.startswith(name)]
                return ("node", found[0]) if len(found) == 1 else None
            return None
        if kind == "node":
            n = ent[1]
            if name == ".dvid":
                return ("ctrl", n)
            t = self.visible(n).get(name)
            return ("inst", n, name, t) if t else None
        if kind == "ctrl":
            return ("cfile", ent[1], name) if name in CONTROL_LISTED else None
        if kind == "inst":
            _, n, inst, t = ent
            planes = GRAY_PLANES if t == "grayscale" else SEG_PLANES
            if name in planes:
                return ("plane", n, inst, name)
            if name == "info.json":
                return ("info", n, inst)
            if t == "labels" and name == "labels":
                return ("labels", n, inst)
            if t == "labels" and name in ("merge", "mutations.jsonl"):
                return ("lmerge" if name == "merge" else "mut", n, inst)
            return None
        if kind == "plane":
            _, n, inst, plane = ent
            temp = self.temps.get(self.tkey(ent), {}).get(name)
            if temp is not None:
                return ("temp", ent, name)
            c = slice_coord(name)
            vol = self.data(n, inst)
            if c is None or vol is None or c not in vol.coords(plane):
                return None
            return ("slice", n, inst, plane, c)
        if kind == "labels":
            _, n, inst = ent
            b = label_id(name)
            return ("body", n, inst, b) if b is not None and b in n.seg.bodies() else None
        if kind == "body":
            return ("bfile",) + ent[1:] + (name,) if name in BODY_FILES else None
        return None

    @staticmethod
    def kind_of(ent: tuple) -> str:
        if ent[0] in ("repo", "other-repo", "node", "ctrl", "inst", "plane", "labels", "body", "root"):
            return "dir"
        return "link" if ent[0] == "link" else "file"

    @staticmethod
    def tkey(plane_ent: tuple) -> tuple:
        _, n, inst, plane = plane_ent
        return (id(n), inst, plane)

    def exists(self, ent: tuple) -> bool:
        """A directory entity built from a spec still exists."""
        if ent[0] == "inst":
            return ent[2] in self.visible(ent[1])
        if ent[0] == "body":
            return ent[3] in ent[1].seg.bodies()
        return True

    @staticmethod
    def locked(ent: tuple) -> bool:
        return any(isinstance(x, NodeM) and x.locked for x in ent[:2])

    @staticmethod
    def node_of(ent: tuple) -> NodeM | None:
        for x in ent[1:3]:
            if isinstance(x, NodeM):
                return x
            if isinstance(x, tuple):
                return Model.node_of(x)
        return None

    # ------------------------------------------------------------ commands (the `.dvid` files, `merge`)
    def command(self, target: tuple, raw: bytes) -> bool:
        """Run one command; True if it succeeds (its effect applied), False if
        it is refused (nothing changed)."""
        ok = self._command(target, raw)
        self.effects[("command", target[-1] if target[0] == "cfile" else "labels merge", ok)] += 1
        return ok

    def _command(self, target: tuple, raw: bytes) -> bool:
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            return False
        if target[0] == "lmerge":
            return self._body_merge(target[1], text)
        n, name = target[1], target[2]
        if name == "commit":
            if n.locked:
                return False
            n.locked, n.note = True, text or n.note
            return True
        if name == "note":
            n.note = text
            return True
        if name == "log":
            n.log += [line for line in text.splitlines() if line]
            return True
        if name == "branch":
            return self._branch(n, text or None)
        if name == "merge":
            return self._merge(n, text)
        if name == "newdata":
            return self._newdata(n, text)
        return False

    def _new_node(self, parents: list, branch: str, note: str = "") -> NodeM:
        src = parents[0]
        child = NodeM(None, branch, list(parents), copy.deepcopy(src.gray), copy.deepcopy(src.seg), note=note)
        for p in parents:
            p.children.append(child)
        self.nodes.append(child)
        self.placeholders.append(child)
        return child

    def _branch(self, n: NodeM, name: str | None) -> bool:
        if not n.locked:
            return False
        if name is None or name == n.branch:
            if any(c.branch == n.branch for c in n.children):
                return False
            self._new_node([n], n.branch)
            return True
        if not valid_name(name) or name == "master" or name in self.branches():
            return False
        self._new_node([n], name)
        return True

    def _resolve(self, ref: str) -> NodeM | None:
        """DVID's node reference within this repo (None: refused)."""
        m = REF_RE.match(ref)
        if not m:
            return None
        prefix, branch, back = m.group("prefix"), m.group("branch"), m.group("back")
        if prefix in self.repos and prefix != self.alias:
            return None      # another repo's node: refused (different repo, or no such branch/parent)
        if prefix == self.alias:
            prefix, branch = "", branch or "master"
        elif prefix and not HEX_RE.fullmatch(prefix.lower()):
            return None
        prefix = prefix.lower()
        if prefix:
            if any(p.uuid is None for p in self.nodes):
                raise Lost("a prefix that may name a node made in this very syscall")
            found = [p for p in self.nodes if p.uuid.startswith(prefix)]
            if len(found) != 1:
                return None
            node = found[0]
        elif branch is None:
            return None
        if branch is not None:
            node = self.branches().get(branch)
            if node is None:
                return None
        for _ in range(int(back or 0)):
            if not node.parents:
                return None
            node = node.parents[0]
        return node

    def _merge(self, n: NodeM, text: str) -> bool:
        refs = [r for r in re.split(r"[\s,]+", text) if r]
        if not refs:
            return False
        others = []
        for r in refs:
            o = self._resolve(r)
            if o is None:
                return False
            others.append(o)
        parents = [n] + others
        if len(set(map(id, parents))) != len(parents) or not all(p.locked for p in parents):
            return False
        sides = [self.ancestors(p) for p in parents]
        common = [a for a in sides[0] if all(a in s for s in sides[1:])]
        changed = [p for p, s in zip(parents, sides) if any(a.wrote for a in s if a not in common)]
        if len(changed) > 1:
            raise Lost("a merge of two nodes that both changed data")
        src = changed[0] if changed else n
        note = f"merge of {n.uuid[:8]} and " + ", ".join(o.uuid[:8] for o in others)
        child = self._new_node(parents, n.branch, note)
        child.gray, child.seg = copy.deepcopy(src.gray), copy.deepcopy(src.seg)
        return True

    def _newdata(self, n: NodeM, text: str) -> bool:
        parts = text.split()
        if len(parts) not in (2, 3) or parts[0] not in ("grayscale", "labels"):
            return False
        if len(parts) == 3:
            try:
                bs = int(parts[2])
            except ValueError:
                return False
            if bs <= 0 or bs % 8 or bs > 1024:
                return False
        return self._new_instance(n, parts[1], parts[0])

    def _new_instance(self, n: NodeM, name: str, typename: str) -> bool:
        if n.locked or not valid_name(name) or name in self.instances:
            return False
        self.instances[name] = (typename, n)
        return True

    def _body_merge(self, n: NodeM, text: str) -> bool:
        words = [w for w in re.split(r"[\s,]+", text) if w]
        ids = [label_id(w) for w in words]
        if len(ids) < 2 or None in ids:
            return False
        target, others = ids[0], ids[1:]
        if target in others or len(set(others)) != len(others) or n.locked:
            return False
        bodies = n.seg.bodies()
        if any(b not in bodies for b in ids):
            return False
        gone = set(others)
        lab = n.seg
        svs = {int(v) for v in np.unique(lab.vol.arr)} | set(lab.mapping)
        for sv in svs:
            if lab.mapping.get(sv, sv) in gone:
                lab.mapping[sv] = target
        lab.mutations.append({"Action": "merge", "Target": target, "Labels": others})
        n.wrote = True
        return True

    # ------------------------------------------------------------ uploads (slices, split)
    def upload(self, target: tuple, data: bytes) -> bool:
        ok = self._upload(target, data)
        what = "split" if target[0] == "bfile" else f"{target[2]}/{target[3]} slice"
        self.effects[("upload", what, ok)] += 1
        return ok

    def _upload(self, target: tuple, data: bytes) -> bool:
        n = self.node_of(target)
        if n.locked:
            return False
        if target[0] == "bfile":
            return self._split(target, data)
        _, n, inst, plane, c = target
        if plane.endswith("-rgb"):
            return False
        vol = self.data(n, inst)
        try:
            img = decode_image(data, vol.arr.dtype, vol.shape(plane))
        except Exception:   # noqa: BLE001 - the codec's refusal (InvalidInputError)
            return False
        if not vol.put(plane, c, img):
            raise Lost("a valid slice far outside the extents")
        if inst == "seg":
            self.max_label = max(self.max_label, int(img.max()))
        n.wrote = True
        return True

    def _split(self, target: tuple, data: bytes) -> bool:
        _, n, inst, body, name = target
        if name != "split" or body not in n.seg.bodies():
            return False
        vox = rles_voxels(data)
        if not vox or not vox <= n.seg.voxels(body) or self.max_label == 2**64 - 1:
            return False     # (no id is left above the largest label: refused)
        self.splits.append((n, body, vox))
        n.wrote = True
        return True

    def upload_limit(self, target: tuple) -> int | None:
        """Exact limit for split; None for slices (between LIMIT_SURE and LIMIT_NEVER)."""
        if target[0] == "bfile":
            return 12 + 16 * target[1].seg.size(target[3])
        return None


# ---------------------------------------------------------------------------- the runner
class Failed:
    def __init__(self, exc: OSError):
        self.errno = exc.errno

    def __repr__(self):
        return errno.errorcode.get(self.errno, str(self.errno))


def _try(fn, *args):
    try:
        return fn(*args)
    except OSError as exc:
        return Failed(exc)


class Fuzzer:
    """Runs examples on one mount of a store of fresh repos.  When they are used
    up (shrinking runs many examples) it unmounts, adds repos with `Dvid` and
    mounts again."""

    def __init__(self, base, pool: int):
        self.store, self.mnt = base / "store", os.fsencode(str(base / "mnt"))
        self.log_path = base / "mount-mnt.log"
        self.pool_size = pool
        self.pool: list = []
        self.repos: set[str] = set()
        self.built, self.ctx, self.proc = 0, None, None
        self.m: Model | None = None
        self.examples = self.syscalls = self.lost = self.mounts = 0
        self.stats: collections.Counter = collections.Counter()   # (syscall, ok|errno) and model effects
        self.grow()

    def grow(self) -> None:
        self.stop()
        made = _build_pool(self.store, self.built, self.pool_size)
        self.built += len(made)
        self.pool += made
        self.repos |= {alias for alias, _, _ in made}
        self.ctx = mounted(self.store, os.fsdecode(self.mnt))
        self.proc = self.ctx.__enter__()
        self.mounts += 1

    def stop(self) -> None:
        ctx, self.ctx = self.ctx, None
        if ctx is not None:
            ctx.__exit__(None, None, None)

    # ------------------------------------------------------------ checks
    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            with open(self.log_path, "rb") as f:
                return f.read()[-3000:].decode(errors="replace")
        return ""

    def alive(self, what: str) -> None:
        assert self.proc.poll() is None, f"the mount process died after {what}:\n{self.log_tail()}"
        assert self.m.alias.encode() in os.listdir(self.mnt), f"the mount stopped answering after {what}"

    def check(self, what: str, result, want) -> None:
        """`want`: True (must succeed), False (must fail), None (either)."""
        self.syscalls += 1
        self.stats[(what.split()[0], repr(result) if isinstance(result, Failed) else "ok")] += 1
        if isinstance(result, Failed):
            assert result.errno in ALLOWED, (f"{what}: {result!r}, not a documented errno (EIO means an "
                                             f"exception escaped a handler)\nmount log:\n{self.log_tail()}")
            assert want is not True or self.m.lost, f"{what}: failed with {result!r}; the model expects success"
        else:
            assert want is not False or self.m.lost, f"{what}: succeeded; the model expects an errno"

    def want(self, fn):
        """The model's prediction, or None once the example is lost."""
        if self.m.lost:
            return None
        try:
            return fn()
        except Lost as exc:
            self.m.lost = str(exc)
            return None

    # ------------------------------------------------------------ resolving specs
    def node(self, sel: str) -> tuple[NodeM, bytes]:
        m = self.m
        if sel == "R":
            return m.R, m.R.uuid.encode()
        if sel == "Rp":
            return m.R, m.R.uuid[:10].encode()
        if sel == "new":
            n = m.newest()
            return n, n.uuid.encode()
        if sel in ("work", "master"):
            return m.branches()[sel], sel.encode()
        return m.W, m.W.uuid.encode()

    def dir(self, spec: tuple) -> tuple[tuple, bytes]:
        m = self.m
        if spec[0] == "/":
            return ("root",), self.mnt
        repo = self.mnt + b"/" + m.alias.encode()
        if spec[0] == "repo":
            return ("repo",), repo
        n, comp = self.node(spec[0])
        path, ent = repo + b"/" + comp, ("node", n)
        for c in spec[1:]:
            if c.startswith("#"):
                bodies = n.seg.bodies()
                c = str(bodies[int(c[1:]) % len(bodies)] if bodies else 7)
            path += b"/" + c.encode()
            ent = m.child(ent, c) or ("missing",)
        return ent, path

    def file(self, spec: tuple, k: int, fmt: int) -> tuple[tuple, bytes]:
        if spec[-1] != "@":
            ent, path = self.dir(spec[:-1])
            name = spec[-1]
        else:
            ent, path = self.dir(spec[:-1])
            vol = self.m.data(ent[1], ent[2]) if ent[0] == "plane" else None
            coords = vol.coords(ent[3]) if vol is not None else range(0, 1)
            c = coords[k % len(coords)]
            ext = "tif" if ent[0] == "plane" and ent[2] == "seg" and not ent[3].endswith("rgb") else "png"
            name = (f"{c:05d}.{ext}", f"{c}.{ext}", f"xy{c:04d}.{ext}", f"IMG {c:03d}.{ext}")[fmt % 4]
        child = self.m.child(ent, name) if ent[0] != "missing" else None
        return child or ("missing",), path + b"/" + name.encode()

    # ------------------------------------------------------------ content
    def content(self, c, target: tuple) -> bytes:
        if isinstance(c, Raw):
            return c.data
        if isinstance(c, Img):
            return self._image(c, target)
        if isinstance(c, SplitOf):
            return self._split_bytes(c, target)
        if isinstance(c, Cmd):
            text = self._command_text(c, target)
            return text.encode("utf-8", "surrogateescape") + (b"\n" if c.newline else b"")
        raise TypeError(c)

    def _image(self, c: Img, target: tuple) -> bytes:
        rng = np.random.default_rng(c.seed)
        seg = False
        h, w = SHAPE[1], SHAPE[2]
        if target[0] == "temp":
            target = target[1]
        if target[0] in ("slice", "plane"):
            vol = self.m.data(target[1], target[2])
            if vol is not None:
                h, w = vol.shape(target[3])
            seg = target[2] == "seg"
        h, w = max(1, h + c.dh), max(1, w + c.dw)
        if seg:
            ids = np.array([0, *self.m.W.seg.bodies(), *NEW_IDS], np.uint64)
            img = ids[rng.integers(0, len(ids), (h, w))]
            small = np.array([0, 7, 9, 11, 100], np.uint8)[rng.integers(0, 5, (h, w))]
        else:
            img = rng.integers(0, 256, (h, w), dtype=np.uint8)
            small = img
        v = c.variant
        if v == "tiff":
            return tiff_bytes(img)
        if v == "tiff16":
            return tiff_bytes(small.astype(np.uint16))
        if v == "png16":
            return png_bytes(small.astype(np.uint16))
        if v == "png16big":
            return png_bytes(small.astype(np.uint16) + 300)
        if v == "rgb":
            return png_bytes(np.stack([small] * 3, axis=-1))
        good = png_bytes(small)
        if v == "trunc":
            return good[:int(rng.integers(0, len(good)))]
        if v == "suffix":
            return good + rng.bytes(int(rng.integers(1, 40)))
        return good

    def _split_bytes(self, c: SplitOf, target: tuple) -> bytes:
        rng = np.random.default_rng(c.seed)
        n = target[1] if target[0] == "bfile" else self.m.W
        body = target[3] if target[0] == "bfile" else 7
        lab = n.seg
        mask = lab.mapped(lab.vol.arr) == np.uint64(body)
        if c.variant == "part" and mask.any():
            keep = rng.random(mask.shape) < 0.5
            if (mask & keep).any():
                mask = mask & keep
        elif c.variant == "outside":
            mask = mask.copy()
            mask[tuple(int(rng.integers(0, s)) for s in mask.shape)] = True
            mask[0, 0, 0] = mask[0, 0, 0] or not mask.any()
            other = lab.mapped(lab.vol.arr) != np.uint64(body)
            if not (mask & other).any():
                mask = mask | other
        elif c.variant == "empty":
            return bytes([0, 3, 0, 0]) + struct.pack("<II", 0, 0)
        data = ref_rles(mask, lab.vol.lo)
        if c.variant == "dup":    # every run twice: the same voxels, more bytes
            count = struct.unpack_from("<I", data, 8)[0]
            data = data[:8] + struct.pack("<I", 2 * count) + data[12:] + data[12:]
        return data

    def _command_text(self, c: Cmd, target: tuple) -> str:
        m = self.m
        if c.kind == "text":
            return c.args[0]
        if c.kind == "branch":
            which = c.args[0]
            m.fresh += 1
            return {"fresh": f"b{m.fresh}",
                    "same": "", "taken": "work", "master": "master",
                    "uuid": "0123456789abcdef0123456789abcdef"}.get(which, which)
        if c.kind == "merge":
            out = []
            for sel in c.args:
                if isinstance(sel, str) and sel in ("R", "W", "new", "work", "master"):
                    n, _ = self.node(sel)
                    out.append(n.uuid or "")
                elif isinstance(sel, int):
                    n, _ = self.node(("R", "W", "new")[sel % 3])
                    out.append((n.uuid or "")[:max(4, sel % 32)])
                else:
                    out.append(str(sel))
            return " ".join(out)
        if c.kind == "newdata":
            typ, name, bs = c.args
            return " ".join(str(x) for x in (typ, name, bs) if x != "")
        if c.kind == "bodies":
            n = self.m.node_of(target) or m.W
            bodies = n.seg.bodies() if n.seg is not None else []
            words = []
            for t in c.args:
                if isinstance(t, int):
                    words.append(str(bodies[t % len(bodies)] if bodies else 7))
                else:
                    words.append(t)
            return " ".join(words)
        raise ValueError(c.kind)

    # ------------------------------------------------------------ after each syscall
    def learn(self) -> None:
        """Learn the UUIDs of nodes and the ids of split bodies made by the last
        syscall (the model knows they were made, not their names)."""
        m = self.m
        if m.lost or not (m.placeholders or m.splits):
            return
        if m.placeholders:
            repo = self.mnt + b"/" + m.alias.encode()
            known = {n.uuid for n in m.nodes if n.uuid} | set(m.branches())
            new = [u.decode() for u in os.listdir(repo) if u.decode() not in known and UUID_RE.fullmatch(u.decode())]
            infos = []
            for u in new:
                with open(repo + b"/" + u.encode() + b"/.dvid/info.json", "rb") as f:
                    infos.append(json.load(f))
            infos.sort(key=lambda d: d["VersionID"])
            assert len(infos) == len(m.placeholders), (
                f"the model made {len(m.placeholders)} node(s), the mount shows {len(infos)} new: {new}")
            for ph, info in zip(m.placeholders, infos):
                ph.uuid = info["UUID"]
                assert info["Parents"] == [p.uuid for p in ph.parents], (info, [p.uuid for p in ph.parents])
                assert info["Branch"] == ph.branch, (info, ph.branch)
            m.placeholders.clear()
        for n, body, vox in m.splits:
            path = b"%s/%s/%s/seg/mutations.jsonl" % (self.mnt, m.alias.encode(), n.uuid.encode())
            with open(path, "rb") as f:
                rec = json.loads(f.read().splitlines()[-1])
            assert (rec["Action"], rec["Target"], rec["Voxels"]) == ("split", body, len(vox)), rec
            new_id = rec["NewLabel"]
            lab = n.seg
            assert new_id == m.max_label + 1, f"split's new label {new_id}, the largest label was {m.max_label}"
            m.max_label = new_id
            lx, ly, lz = lab.vol.lo
            for x, y, z in vox:
                lab.vol.arr[z - lz, y - ly, x - lx] = new_id
            lab.mutations.append({"Action": "split", "Target": body, "NewLabel": new_id})
        m.splits.clear()

    def sys(self, what: str, want, fn, *args):
        """One syscall, checked; then learn what it made."""
        r = _try(fn, *args)
        self.check(what, r, want)
        if not isinstance(r, Failed) or want is None:
            self.learn()
        return r

    # ------------------------------------------------------------ steps
    def run(self, steps) -> None:
        for i, s in enumerate(steps):
            if isinstance(s, Seq):
                self.run(s.steps)
                continue
            getattr(self, "_" + type(s).__name__)(s)
            self.alive(f"step {i} {s!r}")

    def _Stat(self, s: Stat) -> None:
        ent, path = self.dir(s.dir)
        name = os.fsdecode(s.name)

        def want():
            if len(s.name) > FUSE_NAME_MAX or ent[0] == "missing" or not self.m.exists(ent):
                return False
            return name in (".", "..") or self.m.child(ent, name) is not None
        w = self.want(want)
        r = self.sys(f"lstat {path + b'/' + s.name!r}", w, os.lstat, path + b"/" + s.name)
        if w and not isinstance(r, Failed) and name not in (".", ".."):
            kind = Model.kind_of(self.m.child(ent, name))
            got = "dir" if stat.S_ISDIR(r.st_mode) else "link" if stat.S_ISLNK(r.st_mode) else "file"
            assert got == kind, f"lstat {s!r}: a {got}, the model has a {kind}"

    def _ListDir(self, s: ListDir) -> None:
        ent, path = self.dir(s.dir)
        w = self.want(lambda: ent[0] != "missing" and self.m.exists(ent))
        r = self.sys(f"listdir {path!r}", w, os.listdir, path)
        if w and not isinstance(r, Failed) and not self.m.lost:
            expect = self.listing(ent)
            if ent[0] == "plane":
                assert r == expect, f"listdir {path!r}: {r} != model {expect}"
            else:
                assert sorted(r) == sorted(expect), f"listdir {path!r}: {sorted(r)} != model {sorted(expect)}"

    def listing(self, ent: tuple) -> list[bytes]:
        m = self.m
        k = ent[0]
        if k == "root":
            names = sorted(m.repos)
        elif k == "repo":
            names = [n.uuid for n in m.nodes] + list(m.branches())
        elif k == "node":
            names = [".dvid", *m.visible(ent[1])]
        elif k == "ctrl":
            names = list(CONTROL_LISTED)
        elif k == "inst":
            names = ["info.json", "precomputed", *(GRAY_PLANES if ent[3] == "grayscale" else
                                                   SEG_PLANES + ("labels", "merge", "mutations.jsonl"))]
        elif k == "plane":
            _, n, inst, plane = ent
            vol = m.data(n, inst)
            ext = "tif" if inst == "seg" and not plane.endswith("rgb") else "png"
            names = [f"{c:05d}.{ext}" for c in vol.coords(plane)] if vol is not None else []
            names += sorted(m.temps.get(m.tkey(ent), {}))
        elif k == "labels":
            names = [str(b) for b in ent[1].seg.bodies()]
        elif k == "body":
            names = list(BODY_FILES)
        else:
            names = []
        return [os.fsencode(x) for x in names]

    def _Read(self, s: Read) -> None:
        ent, path = self.file(s.file, s.k, s.fmt)
        w = self.want(lambda: ent[0] != "missing" and Model.kind_of(ent) == "file")
        fd = self.sys(f"open {path!r} O_RDONLY", w, os.open, path, os.O_RDONLY)
        if isinstance(fd, Failed):
            return
        try:
            data = self.sys(f"read {path!r}", None if w is None else True, os.read, fd, 1 << 24)
        finally:
            self.sys(f"close {path!r}", None if w is None else True, os.close, fd)
        if w and not isinstance(data, Failed) and not self.m.lost:
            self.check_content(ent, data, path)

    def check_content(self, ent: tuple, data: bytes, path: bytes) -> None:
        m = self.m
        if ent[0] == "slice":
            _, n, inst, plane, c = ent
            if plane.endswith("-rgb"):
                assert read_png(data).shape == m.data(n, inst).shape(plane) + (3,), path
                return
            if inst == "seg":
                got = tifffile.imread(io.BytesIO(data))
                want = n.seg.mapped(n.seg.vol.get(plane, c))
            else:
                got, want = read_png(data), n.gray.get(plane, c)
            np.testing.assert_array_equal(got, want, err_msg=f"{path!r} differs from the model")
        elif ent[0] == "cfile" and ent[2] in ("note", "log"):
            n = ent[1]
            want = ((n.note + "\n") if n.note else "") if ent[2] == "note" else "".join(x + "\n" for x in n.log)
            assert data == want.encode("utf-8", "surrogatepass"), f"{path!r}: {data!r} != model {want!r}"
        elif ent[0] == "bfile" and ent[4] == "size":
            assert int(data) == ent[1].seg.size(ent[3]), f"{path!r}: {data!r}"

    def _MkDir(self, s: MkDir) -> None:
        ent, path = self.dir(s.dir)
        name = os.fsdecode(s.name)

        def want():
            m = self.m
            if len(s.name) > FUSE_NAME_MAX or ent[0] == "missing" or not m.exists(ent):
                return False
            if name in (".", "..") or m.child(ent, name) is not None:
                return False
            if ent[0] == "root":
                return valid_name(name) and not HEX_RE.fullmatch(name.lower())
            return False  # in a node too: instances are made through .dvid/newdata only
        # the top is shared by all examples: predicted even in a lost example
        w = self.want(want) if ent[0] != "root" else want()
        r = self.sys(f"mkdir {path + b'/' + s.name!r}", w, os.mkdir, path + b"/" + s.name)
        if ent[0] == "root" and not isinstance(r, Failed):
            self.repos.add(name)

    def _RmDir(self, s: RmDir) -> None:
        ent, path = self.dir(s.dir)
        self.sys(f"rmdir {path + b'/' + s.name!r}", self.want(lambda: False), os.rmdir, path + b"/" + s.name)

    def _Unlink(self, s: Unlink) -> None:
        ent, path = self.dir(s.dir)
        name = os.fsdecode(s.name)
        m = self.m

        def want():
            if ent[0] != "plane":
                return False
            c = m.child(ent, name) or ("",)
            # rm of a slice in an open node's stored plane: the slice becomes background
            return c[0] == "temp" or (c[0] == "slice" and not m.locked(ent) and not ent[3].endswith("-rgb"))
        w = self.want(want)
        r = self.sys(f"unlink {path + b'/' + s.name!r}", w, os.unlink, path + b"/" + s.name)
        if w and not isinstance(r, Failed):
            c = m.child(ent, name)
            if c[0] == "temp":
                m.temps[m.tkey(ent)].pop(name)
            else:
                _, n, inst, plane, coord = c
                vol = m.data(n, inst)
                vol.put(plane, coord, np.zeros(vol.shape(plane), vol.arr.dtype))
                n.wrote = True

    def _Rename(self, s: Rename) -> None:
        ent, path = self.dir(s.dir)
        dent, dpath = self.dir(s.dst_dir)
        src, dst = os.fsdecode(s.src), os.fsdecode(s.dst)
        m = self.m
        effect = []

        def want():
            if max(len(s.src), len(s.dst)) > FUSE_NAME_MAX or "missing" in (ent[0], dent[0]):
                return False
            if not (m.exists(ent) and m.exists(dent)):
                return False
            if src in (".", "..") or dst in (".", ".."):
                return False
            old = m.child(ent, src)
            if old is None:
                return False
            same_dir = ent[0] == dent[0] and ent[1:] == dent[1:]
            if same_dir and src == dst:
                return True     # the kernel: a rename onto itself does nothing
            target = m.child(dent, dst)
            if target is not None and Model.kind_of(target) == "dir" and Model.kind_of(old) != "dir":
                return False
            if old[0] != "temp" or not same_dir:
                return False
            if slice_coord(dst) is not None:
                _, n, inst, plane = ent
                temp = m.temps[m.tkey(ent)][src]
                ok = m.upload(("slice", n, inst, plane, slice_coord(dst)), bytes(temp.data))
                if ok:
                    effect.append(lambda: m.temps[m.tkey(ent)].pop(src))
                return ok
            if not is_temp(dst):
                return False
            temps = m.temps[m.tkey(ent)]
            effect.append(lambda: temps.__setitem__(dst, temps.pop(src)))
            return True
        w = self.want(want)
        r = self.sys(f"rename {path + b'/' + s.src!r} -> {dpath + b'/' + s.dst!r}", w,
                     os.rename, path + b"/" + s.src, dpath + b"/" + s.dst)
        if w and not isinstance(r, Failed):
            for f in effect:
                f()

    # ------------------------------------------------------------ opening and writing files
    def _Create(self, s: Create) -> None:
        ent, path = self.dir(s.dir)
        name = os.fsdecode(s.name)
        fpath = path + b"/" + s.name
        m = self.m
        flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if s.excl else 0) | (os.O_TRUNC if s.trunc else 0)
        existing = None if ent[0] == "missing" or m.lost or name in (".", "..") else m.child(ent, name)
        if existing is not None or name in (".", ".."):
            if s.excl or name in (".", "..") or Model.kind_of(existing) != "file":
                w = self.want(lambda: False)
                fd = self.sys(f"open {fpath!r} {flags:#o}", w, os.open, fpath, flags, 0o644)
                if not isinstance(fd, Failed):
                    os.close(fd)
                return
            return self._write_file(existing, fpath, flags, s.content, s.plan)
        handle = []

        def want():
            if len(s.name) > FUSE_NAME_MAX or ent[0] != "plane" or not m.exists(ent) or m.locked(ent):
                return False
            _, n, inst, plane = ent
            c = slice_coord(name)
            if c is not None:
                handle.append(Handle("upload", ("slice", n, inst, plane, c), created=True))
                return True
            if is_temp(name):
                t = Temp(bytearray())
                m.temps.setdefault(m.tkey(ent), {})[name] = t
                handle.append(Handle("scratch", ("temp", ent, name), temp=t))
                return True
            return False
        w = self.want(want)
        content = self.content(s.content, handle[0].target if handle else ent)
        fd = self.sys(f"create {fpath!r} {flags:#o}", w, os.open, fpath, flags, 0o644)
        if isinstance(fd, Failed):
            return
        self._ops(fd, fpath, handle[0] if handle else None, content, s.plan)

    def _Write(self, s: Write) -> None:
        ent, path = self.file(s.file, s.k, s.fmt)
        flags = os.O_WRONLY | (os.O_TRUNC if s.trunc else 0) | (os.O_CREAT if s.creat else 0)
        self._write_file(ent, path, flags, s.content, s.plan)

    def _write_file(self, ent: tuple, path: bytes, flags: int, content, plan: Plan) -> None:
        """Open an existing file for writing, write `content` by `plan`, close."""
        m = self.m
        handle = []
        initial = b""
        if ent[0] == "slice" and not flags & os.O_TRUNC and not m.lost and not m.locked(ent):
            # a slice opened without O_TRUNC starts with its content: read it first
            initial = self._read_all(path)
            self.check_content(ent, initial, path)

        def want():
            k = ent[0]
            if k == "missing" or Model.kind_of(ent) != "file":
                return False
            if k in ("cfile", "lmerge"):
                if k == "cfile" and ent[2] in ("info.json", "last-error"):
                    return False
                handle.append(Handle("now", ent))
                return True
            if k == "temp":
                t = m.temps[m.tkey(ent[1])][ent[2]]
                if flags & os.O_TRUNC:
                    t.data.clear()
                handle.append(Handle("scratch", ent, temp=t))
                return True
            if m.locked(ent):
                return False
            if k == "slice" or (k == "bfile" and ent[4] == "split"):
                handle.append(Handle("upload", ent, data=bytearray(initial), limit=m.upload_limit(ent) or 0))
                return True
            return False
        w = self.want(want)
        data = self.content(content, ent)
        fd = self.sys(f"open {path!r} {flags:#o}", w, os.open, path, flags)
        if isinstance(fd, Failed):
            return
        self._ops(fd, path, handle[0] if handle else None, data, plan)

    def _read_all(self, path: bytes) -> bytes:
        fd = os.open(path, os.O_RDONLY)
        try:
            return os.read(fd, 1 << 24)
        finally:
            os.close(fd)

    def plan_ops(self, data: bytes, plan: Plan) -> list[tuple]:
        ops = []
        if plan.junk:
            ops += [("write", plan.junk), ("trunc", 0), ("seek", 0)]
        cuts = sorted({0, len(data), *(len(data) * c // 1000 for c in plan.cuts)})
        pieces = [(a, data[a:b]) for a, b in zip(cuts, cuts[1:]) if b > a]
        if plan.order == "rev":
            body = [("pwrite", off, p) for off, p in reversed(pieces)]
        else:
            body = [("write", p) for _, p in pieces]
        if plan.fsync_mid:
            body.insert(len(body) // 2, ("fsync",))
        return ops + body + list(plan.tail)

    def _ops(self, fd: int, path: bytes, h: Handle | None, data: bytes, plan: Plan) -> None:
        """Run the plan's syscalls on `fd`, each predicted from handle `h`, then close."""
        pos = 0
        try:
            for op in self.plan_ops(data, plan):
                if op[0] == "seek":
                    os.lseek(fd, op[1], os.SEEK_SET)
                    pos = op[1]
                    continue
                if op[0] == "write":
                    w = self.want(lambda: self._h_write(h, pos, op[1]))
                    r = self.sys(f"write {path!r} {len(op[1])}@{pos}", w, os.write, fd, op[1])
                    if not isinstance(r, Failed):
                        pos += r
                elif op[0] == "pwrite":
                    w = self.want(lambda: self._h_write(h, op[1], op[2]))
                    self.sys(f"pwrite {path!r} {len(op[2])}@{op[1]}", w, os.pwrite, fd, op[2], op[1])
                elif op[0] == "trunc":
                    w = self.want(lambda: self._h_trunc(h, op[1]))
                    self.sys(f"ftruncate {path!r} {op[1]}", w, os.ftruncate, fd, op[1])
                elif op[0] == "fsync":
                    w = self.want(lambda: self._h_flush(h))
                    self.sys(f"fsync {path!r}", w, os.fsync, fd)
                self.alive(f"{op[0]} on {path!r}")
            # an open temp file, or a created slice not stored yet, has the size of what it holds
            held = h is not None and (h.kind == "scratch" or h.created)
            r = self.sys(f"fstat {path!r}", True if held and not self.m.lost else None, os.fstat, fd)
            if held and not isinstance(r, Failed) and not self.m.lost:
                want = len(h.temp.data if h.kind == "scratch" else h.data)
                assert r.st_size == want, f"fstat {path!r}: {r.st_size} bytes, it holds {want}"
            w = self.want(lambda: self._h_flush(h))
        finally:
            r = _try(os.close, fd)
        self.check(f"close {path!r}", r, w)
        if not isinstance(r, Failed) or w is None:
            self.learn()

    def _h_write(self, h: Handle, off: int, buf: bytes):
        m = self.m
        if h.kind == "now":
            h.pending += buf
            if len(h.pending) > MAX_COMMAND:
                h.pending.clear()
                return False
            if h.target[0] == "cfile" and h.target[2] in ("note", "log"):
                return True
            while b"\n" in h.pending:
                line, _, rest = bytes(h.pending).partition(b"\n")
                h.pending = bytearray(rest)
                if not m.command(h.target, line):
                    return False
            return True
        end = off + len(buf)
        if not self._fits(h, end):
            return False
        buf_ = h.temp.data if h.kind == "scratch" else h.data
        if len(buf_) < off:
            buf_.extend(b"\0" * (off - len(buf_)))
        buf_[off:end] = buf
        h.dirty = True
        return True

    def _fits(self, h: Handle, size: int) -> bool:
        limit = self.m.upload_limit(h.target) if h.kind == "upload" else None
        if h.kind == "upload" and h.limit:
            limit = h.limit
        if limit is not None:
            return size <= limit
        if size <= LIMIT_SURE:
            return True
        if size >= LIMIT_NEVER:
            return False
        raise Lost("a size between the sure and the impossible limits")

    def _h_trunc(self, h: Handle, size: int):
        if h.kind == "now":
            return True
        if not self._fits(h, size):
            return False
        buf = h.temp.data if h.kind == "scratch" else h.data
        del buf[size:]
        buf.extend(b"\0" * (size - len(buf)))
        h.dirty = True
        return True

    def _h_flush(self, h: Handle):
        m = self.m
        if h.kind == "now":
            if not h.pending:
                return True
            raw, h.pending = bytes(h.pending), bytearray()
            return m.command(h.target, raw)
        if h.kind == "scratch" or not h.dirty:
            return True
        h.dirty = False
        ok = m.upload(h.target, bytes(h.data))
        h.created = h.created and not ok
        return ok

    def _TempToSlice(self, s: TempToSlice) -> None:
        self._Create(Create(s.dir, s.temp, s.content, s.plan))
        self._Rename(Rename(s.dir, s.temp, s.dir, s.target))

    def _TempDance(self, s: TempDance) -> None:
        ent, path = self.dir(s.dir)
        m = self.m
        if ent[0] != "plane" or not is_temp(os.fsdecode(s.a)) or not is_temp(os.fsdecode(s.b)) \
                or m.child(ent, os.fsdecode(s.a)) is not None or m.locked(ent):
            return   # only fresh temp files in an open plane
        pa = path + b"/" + s.a
        fa = self.sys(f"create {pa!r}", self.want(lambda: True), os.open, pa, os.O_WRONLY | os.O_CREAT, 0o644)
        if isinstance(fa, Failed):
            return
        ta = Temp(bytearray())
        if not m.lost:
            m.temps.setdefault(m.tkey(ent), {})[os.fsdecode(s.a)] = ta
        try:
            w = self.want(lambda: self._h_write(Handle("scratch", ("temp", ent, s.a), temp=ta), 0, s.data_a))
            self.sys(f"write {pa!r}", w, os.write, fa, s.data_a)
            self._Create(Create(s.dir, s.b, Raw(s.data_b)))
            self._Rename(Rename(s.dir, s.b, s.dir, s.a))
            if s.unlink:
                self._Unlink(Unlink(s.dir, s.a))
            w = self.want(lambda: True)   # an open file keeps its data and size, named or not (POSIX)
            r = self.sys(f"fstat {pa!r} (held)", w, os.fstat, fa)
            if w and not isinstance(r, Failed):
                assert r.st_size == len(ta.data), f"fstat of held {pa!r}: {r.st_size} != {len(ta.data)}"
            off = len(ta.data)
            w = self.want(lambda: self._h_write(Handle("scratch", ("temp", ent, s.a), temp=ta), off, b"z"))
            self.sys(f"write {pa!r} (held)", w, os.pwrite, fa, b"z", off)
        finally:
            self.check(f"close {pa!r} (held)", _try(os.close, fa), self.want(lambda: True))

    # ------------------------------------------------------------ one example
    def example(self, steps) -> None:
        if not self.pool:
            self.grow()
        alias, root, work = self.pool.pop(0)
        self.m = Model(alias, root, work, self.repos)
        self.examples += 1
        try:
            self.run(steps)
        finally:
            self.stats.update(self.m.effects)
        if self.m.lost:
            self.lost += 1
            event(f"lost: {self.m.lost}")
            return
        self.verify()

    def verify(self) -> None:
        """The whole repo, read back through the mount, equals the model."""
        m = self.m
        assert sorted(os.listdir(self.mnt)) == sorted(os.fsencode(r) for r in m.repos), "repos at the top"
        repo = self.mnt + b"/" + m.alias.encode()
        assert sorted(os.listdir(repo)) == sorted(self.listing(("repo",))), "nodes and branches of the repo"
        for b, tip in m.branches().items():
            assert os.readlink(repo + b"/" + b.encode()) == tip.uuid.encode(), f"branch {b}"
        for n in m.nodes:
            self.verify_node(repo + b"/" + n.uuid.encode(), n)

    def verify_node(self, path: bytes, n: NodeM) -> None:
        m = self.m
        with open(path + b"/.dvid/info.json", "rb") as f:
            info = json.load(f)
        want = {"Locked": n.locked, "Note": n.note, "Log": n.log, "Branch": n.branch,
                "Parents": [p.uuid for p in n.parents], "Children": [c.uuid for c in n.children]}
        got = {k: info[k] for k in want}
        assert got == want, f"node {n.uuid}: {got} != model {want}"
        assert sorted(os.listdir(path)) == sorted(self.listing(("node", n))), f"instances of {n.uuid}"
        assert sorted(os.listdir(path + b"/.dvid")) == sorted(x.encode() for x in CONTROL_LISTED)
        for f in ("note", "log"):
            self.check_content(("cfile", n, f), self._read_all(path + b"/.dvid/" + f.encode()), path)
        size = os.stat(path + b"/.dvid/last-error").st_size
        data = self._read_all(path + b"/.dvid/last-error")
        assert size == len(data), f"stat size of {n.uuid}/.dvid/last-error: {size}, it holds {data!r}"
        # grayscale: listings, and slices of every plane (first, last, one between)
        vol = n.gray
        for plane in GRAY_PLANES:
            ent = ("plane", n, "gray", plane)
            pdir = path + b"/gray/" + plane.encode()
            assert os.listdir(pdir) == self.listing(ent), f"{pdir!r}"
            cs = vol.coords(plane)
            for c in sorted({cs[0], cs[-1], cs[len(cs) // 2]}):
                f = pdir + f"/{c:05d}.png".encode()
                data = self._read_all(f)
                assert os.stat(f).st_size == len(data), f"stat size of {f!r}"
                self.check_content(("slice", n, "gray", plane, c), data, f)
        # labels: xy slices, bodies, one body's size, the mutation log
        lab = n.seg
        for plane in ("xy", "xz"):
            pdir = path + b"/seg/" + plane.encode()
            assert os.listdir(pdir) == self.listing(("plane", n, "seg", plane)), f"{pdir!r}"
        cs = lab.vol.coords("xy")
        for c in sorted({cs[0], cs[-1]}):
            f = path + f"/seg/xy/{c:05d}.tif".encode()
            self.check_content(("slice", n, "seg", "xy", c), self._read_all(f), f)
        bodies = lab.bodies()
        got = sorted(int(b) for b in os.listdir(path + b"/seg/labels"))
        assert got == bodies, f"bodies of {n.uuid}: {got} != model {bodies}"
        if bodies:
            f = path + f"/seg/labels/{bodies[0]}/size".encode()
            self.check_content(("bfile", n, "seg", bodies[0], "size"), self._read_all(f), f)
        recs = [json.loads(x) for x in self._read_all(path + b"/seg/mutations.jsonl").splitlines()]
        got = [{k: r[k] for k in mut} for r, mut in zip(recs, lab.mutations)]
        assert len(recs) == len(lab.mutations) and got == lab.mutations, f"mutations of {n.uuid}: {recs}"
        for (nid, inst, plane), temps in m.temps.items():
            if nid == id(n) and temps:
                ent = ("plane", n, inst, plane)
                assert os.listdir(path + f"/{inst}/{plane}".encode()) == self.listing(ent)


def _non_utf8(name: bytes | None) -> bool:
    if name is None:
        return False
    try:
        name.decode("utf-8")
        return False
    except UnicodeDecodeError:
        return True


# ---------------------------------------------------------------------------- strategies
def _clean(b: bytes) -> bytes:
    b = b.replace(b"/", b"_").replace(b"\0", b"_")
    return b or b"_"


SPECIAL_NAMES = [
    b".", b"..", b"master", b"work", b"gray", b"seg", b".dvid", b"xy", b"xz", b"yz", b"xy-rgb", b"labels",
    b"merge", b"mutations.jsonl", b"info.json", b"commit", b"branch", b"note", b"log", b"newdata",
    b"last-error", b"split", b"size", b"sparsevol", b"7", b"9", b"11", b"0", b"007", b"00003.png", b"3.png",
    b"-0001.png", b"00003.tif", b"00003.tiff", b"00006.png", b"00100.png", b"-0003.png", b"2147483647.png",
    b"2147483648.png", b"-2147483648.png", b"-2147483649.png", b"99999999999.png", b"xy0003.png",
    b"xy0003.tif", b"stack 0002.png", b"xy0003.PNG", b"IMG_0001.png", b"notes.txt", b"mystack.png",
    b".00003.png.Ab12Cd", b".~lock.00003.png#", b".tmp", "٣.png".encode(), "²".encode(), "٣".encode(),
    str(2**64).encode(), str(2**64 - 1).encode(), b"-7", b"7 ", b" 7", b"7\n", b"a\nb", b"new repo",
    "é".encode(), "日本".encode(), "🙂.png".encode(), b"\xff\xfe", b"\x80abc.png", b"a" * 255, b"0" * 255,
    b"x" * 256, b"." + b"a" * 254, b"xy" + b"0" * 248 + b"3.png", b"y" * (FUSE_NAME_MAX + 1), b"fz000",
    b"newrepo", b"Repo-1.x", b"deadbeef", b"0" * 32, b"0123456789abcdef0123456789abcdef", b"gray2",
    b"a", b"Z", b" ", b"\n", b"\t",
]
SLICE_NAMES = st.builds(
    lambda c, f: (f"{c:05d}.png", f"{c}.png", f"xy{c:04d}.png", f".{c:05d}.png.tmp", f"{c:05d}.tif",
                  f"IMG {c}.tiff")[f].encode(),
    st.integers(-3, 9), st.integers(0, 5))
NAMES = st.one_of(
    st.sampled_from(SPECIAL_NAMES),
    st.binary(min_size=1, max_size=24).map(_clean),
    st.text(min_size=1, max_size=16).map(lambda s: _clean(s.encode("utf-8", "surrogatepass"))),
    SLICE_NAMES,
    st.integers(240, 300).map(lambda n: b"L" * n),
)
TEMP_NAMES = st.one_of(st.sampled_from([b".a", b".b", b".00003.png.Ab12Cd", b".tmp", b".\xff"]),
                       st.binary(max_size=12).map(lambda b: b"." + _clean(b)))

NODE_SELS = ("W", "R", "new", "work", "master", "Rp")
PLANE_DIRS = [("W", "gray", "xy"), ("W", "gray", "xz"), ("W", "gray", "yz"), ("W", "seg", "xy"),
              ("W", "seg", "xz"), ("W", "seg", "xy-rgb"), ("R", "gray", "xy"), ("new", "gray", "xy"),
              ("work", "gray", "yz"), ("new", "seg", "xy")]
DIRS = [("/",), ("repo",), *((s,) for s in NODE_SELS), ("W", ".dvid"), ("R", ".dvid"), ("W", "gray"),
        ("W", "seg"), ("R", "gray"), *PLANE_DIRS, ("W", "seg", "labels"), ("W", "seg", "labels", "#0"),
        ("W", "seg", "labels", "#1"), ("R", "seg", "labels", "#2")]

SLICE_FILES = [d + ("@",) for d in PLANE_DIRS]
CTRL_FILES = [(sel, ".dvid", c) for sel in ("W", "R", "new") for c in CONTROL]
BODY_FILE_SPECS = [("W", "seg", "labels", "#0", "split"), ("W", "seg", "labels", "#1", "split"),
                   ("new", "seg", "labels", "#2", "split"), ("R", "seg", "labels", "#0", "split"),
                   ("W", "seg", "labels", "#0", "size"), ("W", "seg", "labels", "#1", "sparsevol")]
OTHER_FILES = [("W", "seg", "merge"), ("R", "seg", "merge"), ("new", "seg", "merge"),
               ("W", "gray", "info.json"), ("W", "seg", "mutations.jsonl")]
FILES = SLICE_FILES + CTRL_FILES + BODY_FILE_SPECS + OTHER_FILES

RAW = st.builds(Raw, st.binary(max_size=200))
IMG = st.builds(Img, st.integers(0, 2**16),
                st.sampled_from(["png"] * 4 + ["png16", "png16big", "tiff", "tiff", "tiff16", "rgb", "trunc",
                                               "suffix"]),
                st.sampled_from([0] * 6 + [1, -1]), st.sampled_from([0] * 6 + [1, -1]))
SPLIT = st.builds(SplitOf, st.integers(0, 2**16),
                  st.sampled_from(["part"] * 4 + ["all", "outside", "empty", "dup"]))
TEXT = st.one_of(st.text(max_size=30), st.sampled_from(["", "\n", "x\ny\n", "  padded  ", "é ünï\u2028code"]))
TEXT_CMD = st.builds(lambda t, nl: Cmd("text", (t,), nl), TEXT, st.booleans())
BRANCH_CMD = st.builds(lambda w, nl: Cmd("branch", (w,), nl),
                       st.sampled_from(["fresh"] * 4 + ["same", "same", "taken", "master", "uuid", "bad name",
                                                        "-x", "a" * 129, "Ünï"]), st.booleans())
MERGE_CMD = st.builds(lambda sels, nl: Cmd("merge", tuple(sels), nl),
                      st.one_of(st.lists(st.sampled_from(["R", "W", "new", "work", "master"]), min_size=1,
                                         max_size=2),
                                st.lists(st.one_of(st.sampled_from(["R", "W", "new", "work", "master"]),
                                                   st.integers(0, 40),
                                                   st.sampled_from(["master", ":work", "~1", "work~1",
                                                                    ":master~0", "zz", "0", ",", "fz0000"])),
                                         max_size=3)), st.booleans())
NEWDATA_CMD = st.one_of(
    st.builds(lambda t, n, b: Cmd("newdata", (t, n, b)), st.sampled_from(["grayscale", "labels"]),
              st.sampled_from(["em2", "seg2", "x.3", "Q"]), st.sampled_from(["", "8", "16", "32"])),
    st.builds(lambda t, n, b, nl: Cmd("newdata", (t, n, b), nl),
              st.sampled_from(["grayscale", "labels", "voxels", "Grayscale"]),
              st.sampled_from(["em2", "seg2", "gray", "seg", "bad name", "x" * 129, "0" * 32, "ünï"]),
              st.sampled_from(["", "", "8", "16", "7", "0", "-8", "2048", "x", "٨", "1_6"]), st.booleans()))
BODIES_CMD = st.one_of(
    st.builds(lambda toks: Cmd("bodies", tuple(toks)), st.lists(st.integers(0, 5), min_size=2, max_size=3)),
    st.builds(lambda toks, nl: Cmd("bodies", tuple(toks), nl),
              st.lists(st.one_of(st.integers(0, 5),
                                 st.sampled_from(["0", str(2**64), str(2**64 - 1), "²", "-7", "7.0", ",",
                                                  "12345"])), max_size=4), st.booleans()))
CMD = st.one_of(TEXT_CMD, BRANCH_CMD, MERGE_CMD, NEWDATA_CMD, RAW)
VALID_NAME = st.from_regex(r"[A-Za-z][A-Za-z0-9_.+-]{0,12}", fullmatch=True).map(str.encode)

SMALL_OFF = st.integers(0, 4096)
HUGE_OFF = st.integers(2**31, 2**40)
TAIL_OP = st.one_of(
    st.tuples(st.just("pwrite"), st.one_of(SMALL_OFF, HUGE_OFF), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("trunc"), st.one_of(st.integers(0, 600), HUGE_OFF)),
    st.just(("fsync",)),
    st.tuples(st.just("write"), st.binary(min_size=1, max_size=16)),
)
CUTS = st.lists(st.integers(1, 999), max_size=4).map(lambda c: tuple(sorted(c)))
CLEAN_PLAN = st.one_of(st.just(Plan()),
                       st.builds(Plan, cuts=CUTS, order=st.sampled_from(["seq", "rev"]), fsync_mid=st.booleans()))
PLAN = st.one_of(
    CLEAN_PLAN,
    st.builds(Plan, cuts=CUTS, order=st.sampled_from(["seq", "rev"]), junk=st.binary(max_size=12),
              fsync_mid=st.booleans(), tail=st.lists(TAIL_OP, max_size=3).map(tuple)),
)

NAMESPACE_STEPS = st.one_of(
    st.builds(Stat, st.sampled_from(DIRS), NAMES),
    st.builds(ListDir, st.sampled_from(DIRS)),
    st.builds(MkDir, st.sampled_from(DIRS), NAMES),
    st.builds(MkDir, st.sampled_from([("/",), ("W",), ("new",), ("R",), ("W", "gray")]), VALID_NAME),
    st.builds(RmDir, st.sampled_from(DIRS), NAMES),
    st.builds(Unlink, st.sampled_from(DIRS), st.one_of(NAMES, TEMP_NAMES)),
    st.builds(Rename, st.sampled_from(PLANE_DIRS + DIRS), st.one_of(TEMP_NAMES, NAMES),
              st.sampled_from(PLANE_DIRS + DIRS), st.one_of(NAMES, SLICE_NAMES, TEMP_NAMES)),
    st.builds(Create, st.sampled_from(PLANE_DIRS + DIRS), st.one_of(NAMES, TEMP_NAMES), RAW, PLAN,
              st.booleans(), st.booleans()),
    st.builds(Create, st.sampled_from(PLANE_DIRS), SLICE_NAMES, st.one_of(IMG, RAW), PLAN,
              st.booleans(), st.booleans()),
    st.builds(TempDance, st.sampled_from(PLANE_DIRS), TEMP_NAMES, TEMP_NAMES, st.binary(max_size=20),
              st.binary(max_size=20), st.booleans()),
)
W_SPLITS = [("W", "seg", "labels", f"#{k}", "split") for k in range(3)]
COMMIT_W = Write(("W", ".dvid", "commit"), Cmd("text", ("done",)))
WRITE_STEPS = st.one_of(
    st.builds(Write, st.sampled_from(SLICE_FILES), st.one_of(IMG, IMG, RAW), PLAN, st.integers(0, 20),
              st.integers(0, 3), st.booleans(), st.booleans()),
    st.builds(Write, st.sampled_from(CTRL_FILES), CMD, PLAN),
    st.builds(lambda sel, f, c, p: Write((sel, ".dvid", f), c, p), st.sampled_from(["W", "new", "R"]),
              st.sampled_from(["note", "log"]), st.one_of(TEXT_CMD, RAW), PLAN),
    st.builds(lambda sel, c, p: Write((sel, ".dvid", "newdata"), c, p), st.sampled_from(["W", "new", "R"]),
              NEWDATA_CMD, PLAN),
    st.builds(lambda sel, c, p: Write((sel, ".dvid", "commit"), c, p), st.sampled_from(["W", "new", "R"]),
              TEXT_CMD, PLAN),
    st.builds(lambda sel, c, p: Write((sel, ".dvid", "branch"), c, p), st.sampled_from(["W", "new", "R"]),
              BRANCH_CMD, PLAN),
    st.builds(lambda sel, c, p: Write((sel, ".dvid", "merge"), c, p), st.sampled_from(["W", "new", "R"]),
              MERGE_CMD, PLAN),
    st.builds(Write, st.sampled_from(W_SPLITS * 3 + BODY_FILE_SPECS), st.one_of(SPLIT, SPLIT, RAW), PLAN),
    st.builds(Write, st.sampled_from(OTHER_FILES), st.one_of(BODIES_CMD, BODIES_CMD, TEXT_CMD, RAW), PLAN),
    # valid label edits, cut in clean pieces
    st.builds(Write, st.sampled_from(W_SPLITS), st.builds(SplitOf, st.integers(0, 2**16),
                                                          st.sampled_from(["part", "part", "all", "dup"])),
              CLEAN_PLAN),
    st.builds(lambda a, d, p: Write(("W", "seg", "merge"), Cmd("bodies", (a, a + d)), p),
              st.integers(0, 5), st.integers(1, 2), CLEAN_PLAN),
    st.builds(TempToSlice, st.sampled_from(PLANE_DIRS), TEMP_NAMES, st.one_of(IMG, IMG, RAW), SLICE_NAMES,
              PLAN),
    st.builds(Read, st.sampled_from(FILES), st.integers(0, 20), st.integers(0, 3)),
    st.builds(ListDir, st.sampled_from(DIRS)),
    # sequences that reach deeper states: commit then branch or merge; branch then edit the child
    st.builds(lambda c, p: Seq((COMMIT_W, Write(("W", ".dvid", "branch"), c, p))), BRANCH_CMD, PLAN),
    st.builds(lambda c, p: Seq((COMMIT_W, Write(("W", ".dvid", "merge"), c, p))), MERGE_CMD, PLAN),
    st.builds(lambda c, f, i: Seq((Write((f, ".dvid", "branch"), c), Write(("new", "gray", "xy", "@"), i))),
              BRANCH_CMD, st.sampled_from(["R", "W"]), IMG),
)

# Fixed examples for CI; DVIDFS_FUZZ_EXAMPLES=2000 DVIDFS_FUZZ_RANDOM=1 for a long exploratory run.
FUZZ = settings(max_examples=int(os.environ.get("DVIDFS_FUZZ_EXAMPLES", "100")), deadline=None,
                derandomize=not os.environ.get("DVIDFS_FUZZ_RANDOM"), database=None, print_blob=False,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large, HealthCheck.filter_too_much])
EXPLICIT = settings(FUZZ, phases=[Phase.explicit])


@pytest.fixture
def fuzz_mount(tmp_path):
    """fuzz_mount(pool) -> the test's Fuzzer (one mount per test,
    shared by its examples; started on first use, always unmounted)."""
    made: list[Fuzzer] = []

    def start(pool: int = 100) -> Fuzzer:
        if not made:
            made.append(Fuzzer(tmp_path, pool))
        return made[0]

    try:
        yield start
    finally:
        for fz in made:
            fz.stop()
            print(f"\nfuzz: {fz.examples} examples, {fz.syscalls} checked syscalls, {fz.lost} lost, "
                  f"{fz.mounts} mount(s)")
            if os.environ.get("FUZZ_STATS"):
                for k, v in sorted(fz.stats.items(), key=str):
                    print(f"  {v:6d}  {k}")


# ---------------------------------------------------------------------------- the fuzz
@FUZZ
@given(steps=st.lists(NAMESPACE_STEPS, min_size=1, max_size=10))
@example(steps=[Unlink(("W", "gray", "xy"), b"00003.png"), Unlink(("W", "seg", "xy"), b"xy0003.tif"),
                Unlink(("W", "seg", "xy-rgb"), b"00004.png"), Unlink(("R", "gray", "xy"), b"00003.png")])
def test_fuzz_names(fuzz_mount, steps):
    """Random names looked up, created, renamed, unlinked, mkdir'ed in every directory kind."""
    fuzz_mount(pool=110).example(steps)


@FUZZ
@given(steps=st.lists(WRITE_STEPS, min_size=1, max_size=8))
def test_fuzz_writes(fuzz_mount, steps):
    """Random and valid bytes, in random chunkings, to every writable file kind."""
    fuzz_mount(pool=110).example(steps)


# ---------------------------------------------------------------------------- bugs the fuzz found
# Each was a strict xfail test with its failing example while the bug was there
# (fixed in 95d6b40); the examples stay, run against the strict model.
@EXPLICIT
@given(steps=st.lists(NAMESPACE_STEPS))
@example(steps=[Create(("W", "gray", "xy"), b"00100.png"), Stat(("W", "gray", "xy"), b"00100.png")])
@example(steps=[Create(("W", "gray", "xy"), b"00100.png", Raw(b"junk")), Stat(("W", "gray", "xy"), b"00100.png")])
def test_found_created_slice_never_stored_leaves_no_name(fuzz_mount, steps):
    """A slice name created outside the extents and closed without an upload
    (or with a refused one) was cached by the kernel for an hour: stat said
    it existed (size 0), the mount listed no such slice."""
    fuzz_mount(pool=4).example(steps)


@EXPLICIT
@given(steps=st.lists(NAMESPACE_STEPS))
@example(steps=[Create(("W", "gray", "xy"), b"\xff.txt"), Read(("W", ".dvid", "last-error"))])
@example(steps=[MkDir(("W", "gray"), b"\x80"), Stat(("W", ".dvid"), b"last-error")])
@example(steps=[Rename(("W", "gray", "xy"), b".t\xfe", ("W", "gray", "xy"), b"x"),
                Read(("W", ".dvid", "last-error"))])
def test_found_last_error_after_a_non_utf8_name(fuzz_mount, steps):
    """A failed create/mkdir with a name that is not UTF-8 kept it surrogate-
    escaped in last-error; every lookup/stat/open of last-error was then EIO
    (UnicodeEncodeError in _last_error_bytes)."""
    fuzz_mount(pool=5).example(steps)


@EXPLICIT
@given(steps=st.lists(NAMESPACE_STEPS))
@example(steps=[MkDir(("W", "gray", "xy"), b"d"), ListDir(("W", ".dvid"))])
@example(steps=[ListDir(("W", ".dvid")), MkDir(("W", "gray", "xy"), b"d")])
def test_found_last_error_size_after_listing_dvid(fuzz_mount, steps):
    """`ls .dvid` gave last-error a one-hour attribute timeout with size 0:
    stat said 0 bytes while it held the message (the check is in verify)."""
    fuzz_mount(pool=4).example(steps)


@EXPLICIT
@given(steps=st.lists(NAMESPACE_STEPS))
@example(steps=[TempDance(("W", "gray", "xy"), b".a", b".b", b"aaa", b"bb", unlink=True)])
@example(steps=[TempDance(("W", "gray", "xy"), b".a", b".b", b"aaa", b"bb", unlink=False)])
def test_found_temp_renamed_over_an_open_temp(fuzz_mount, steps):
    """Renaming temp b over open temp a left a's inode mapped to the name:
    fstat of a's fd showed b's size, and after `unlink a` it was EIO."""
    fuzz_mount(pool=4).example(steps)


@EXPLICIT
@given(steps=st.lists(NAMESPACE_STEPS))
@example(steps=[Create(("W", "gray", "xy"), b"00009.png", Raw(b"junk"), Plan(tail=(("fsync",), ("trunc", 0))))])
def test_found_ftruncate_after_a_refused_fsync_of_a_created_slice(fuzz_mount, steps):
    """After a refused fsync of a created slice, ftruncate on the open fd
    truncated the buffer but answered ENOENT (and fstat was ENOENT)."""
    fuzz_mount(pool=3).example(steps)


# ---------------------------------------------------------------------------- nothing in RAM only
def _put(path, data: bytes, flags=os.O_WRONLY | os.O_TRUNC, pieces: int = 3) -> None:
    """Write in pieces and close; any errno (at open, write or close) raises."""
    fd = os.open(path, flags, 0o644)
    try:
        step = max(1, -(-len(data) // pieces))
        for i in range(0, len(data), step):
            assert os.write(fd, data[i:i + step]) == len(data[i:i + step])
    finally:
        os.close(fd)


def _errno(fn, *args) -> int:
    with pytest.raises(OSError) as ei:
        fn(*args)
    return ei.value.errno


def test_successful_closes_survive_a_remount(tmp_path):
    """Every writable kind of path, written and closed with rc 0, is stored:
    after unmount the store (opened with `Dvid`, no mount) and a new mount
    show it.  Names that could only live in RAM are refused at create."""
    (alias, root, work), = _build_pool(tmp_path / "store", 0, 1)
    mnt = tmp_path / "mnt"
    rng = np.random.default_rng(5)
    gray = BASE_GRAY.copy()
    seg = BASE_SEG.copy()
    img = {z: rng.integers(0, 256, SHAPE[1:], dtype=np.uint8) for z in (1, 2, 4, 6)}
    with mounted(tmp_path / "store", mnt) as proc:
        node, top = mnt / alias / work, mnt / alias / root
        xy = node / "gray" / "xy"
        _put(xy / "00001.png", png_bytes(img[1]))                                   # a slice
        _put(xy / "xy0002.png", png_bytes(img[2]), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)   # ImageJ's name
        _put(xy / "IMG 0006.png", png_bytes(img[6]), os.O_WRONLY | os.O_CREAT | os.O_EXCL)  # new, alias
        gray[1], gray[2] = img[1], img[2]
        gray = np.concatenate([gray, img[6][None]])
        xz = rng.integers(0, 256, (SHAPE[0] + 1, SHAPE[2]), dtype=np.uint8)          # the xz plane grew
        _put(node / "gray" / "xz" / "00003.png", png_bytes(xz))
        gray[:, 3, :] = xz
        _put(xy / ".00004.png.Xy12", png_bytes(img[4]), os.O_WRONLY | os.O_CREAT | os.O_EXCL)  # rsync
        os.rename(xy / ".00004.png.Xy12", xy / "00004.png")
        gray[4] = img[4]
        labels = np.where(rng.random(SHAPE[1:]) < 0.5, 9, 100).astype(np.uint64)
        _put(node / "seg" / "xy" / "00000.tif", tiff_bytes(labels))                  # a label slice
        seg[0] = labels
        _put(node / "seg" / "merge", b"9 7\n", pieces=1)                             # labels merge
        seg[seg == 7] = 9
        cut = np.zeros(SHAPE, bool)
        cut[2, 2:4, 2:4] = True                                                        # half of body 11
        _put(node / "seg" / "labels" / "11" / "split", ref_rles(cut, (0, 0, 0)))     # split
        _put(node / ".dvid" / "note", b"line one\nline two\n")                      # note
        _put(top / ".dvid" / "log", b"checked\n", os.O_WRONLY | os.O_APPEND)           # log (committed node)
        _put(node / ".dvid" / "newdata", b"labels seg2 16\n", pieces=1)              # newdata
        _put(node / ".dvid" / "newdata", b"grayscale gray2\n")                       # newdata (mkdir: refused)
        os.mkdir(mnt / "newrepo")                                                      # mkdir: repo
        _put(top / ".dvid" / "branch", b"side\n", pieces=2)                           # branch
        side = os.readlink(mnt / alias / "side")
        _put(mnt / alias / side / ".dvid" / "commit", b"reviewed\n")                  # commit
        # refused at once, so that nothing lives in RAM only
        assert _errno(os.open, xy / "notes.txt", os.O_WRONLY | os.O_CREAT, 0o644) == errno.EINVAL
        assert _errno(os.open, xy / "mystack.png", os.O_WRONLY | os.O_CREAT, 0o644) == errno.EINVAL
        assert _errno(os.open, node / "seg" / "labels" / "notes.txt", os.O_WRONLY | os.O_CREAT) == errno.EPERM
        assert _errno(os.open, node / ".dvid" / "todo", os.O_WRONLY | os.O_CREAT) == errno.EPERM
        assert _errno(os.open, top / "gray" / "xy" / "00001.png", os.O_WRONLY) == errno.EROFS
        assert _errno(_put, xy / "00003.png", b"\x89PNG garbage") == errno.EINVAL      # at close
        _put(xy / ".scratch.tmp", b"kept in memory until renamed", os.O_WRONLY | os.O_CREAT)
        assert b".scratch.tmp" in os.listdir(os.fsencode(xy))
        new_label = json.loads((node / "seg" / "mutations.jsonl").read_text().splitlines()[-1])["NewLabel"]
        seg[cut] = new_label
        assert proc.poll() is None

    with Dvid(tmp_path / "store") as core:      # the store itself, no mount process
        n = core.node(work)
        np.testing.assert_array_equal(core.read_slice(n, core.data(n, "gray"), "xy", 4), gray[4])
        assert core.node(side).locked and core.node(work).note == "line one\nline two"

    with mounted(tmp_path / "store", mnt) as proc:       # a new mount: only what is stored
        node, top = mnt / alias / work, mnt / alias / root
        xy = node / "gray" / "xy"
        assert sorted(os.listdir(xy)) == [f"{z:05d}.png" for z in range(7)]   # no temp, no notes.txt
        for z in range(7):
            np.testing.assert_array_equal(read_png((xy / f"{z:05d}.png").read_bytes()), gray[z], f"xy {z}")
        np.testing.assert_array_equal(read_png((node / "gray" / "xz" / "00003.png").read_bytes()), gray[:, 3])
        for z in range(SHAPE[0]):
            np.testing.assert_array_equal(tifffile.imread(node / "seg" / "xy" / f"{z:05d}.tif"), seg[z])
        assert sorted(int(b) for b in os.listdir(node / "seg" / "labels")) == [9, 11, 100, new_label]
        assert [r["Action"] for r in map(json.loads, (node / "seg" / "mutations.jsonl").read_text().splitlines())] \
            == ["merge", "split"]
        assert (node / ".dvid" / "note").read_text() == "line one\nline two\n"
        assert (top / ".dvid" / "log").read_text().splitlines()[-1] == "checked"
        assert sorted(os.listdir(node)) == [".dvid", "gray", "gray2", "seg", "seg2"]
        assert json.loads((node / "seg2" / "info.json").read_text())["Extended"]["BlockSize"] == [16] * 3
        assert "newrepo" in os.listdir(mnt)
        info = json.loads((mnt / alias / "side" / ".dvid" / "info.json").read_text())
        assert (info["UUID"], info["Locked"], info["Note"], info["Parents"]) == (side, True, "reviewed", [root])
        assert proc.poll() is None
