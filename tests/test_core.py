"""The core (`Dvid`): its type registry and its change events, on the
in-memory engine (the same core runs on LevelDB in every other test)."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from dvidfs.core import Change, Dvid, default_registry
from dvidfs.data.types import DataType
from dvidfs.errors import ExistsError, InvalidInputError, NotFoundError, ReadOnlyError
from dvidfs.fs.nodes import ROOT
from dvidfs.fs.tree import Tree
from dvidfs.store.memory import MemoryEngine


class Notes(DataType):
    """A type with no front-end view yet: one module, one registration."""

    typename = "notes"

    @classmethod
    def make_config(cls, text: str = "") -> dict:
        if len(text) > 10:
            raise InvalidInputError("text too long")
        return {"Text": text}


@pytest.fixture
def core():
    c = Dvid(engine=MemoryEngine())
    yield c
    c.close()


def _recorder(core):
    seen: list[Change] = []
    core.subscribe(seen.append)
    return seen


def test_registry_refuses_duplicates_and_clashing_merge_rules():
    reg = default_registry()
    assert {"grayscale", "labels", "keyvalue"} <= set(reg.names())
    with pytest.raises(ExistsError):
        reg.register(reg.get("grayscale"))

    class Clash(DataType):
        typename = "clash"
        merge_rules = {2: lambda ctx: None}  # class 2 (extents) already has the volumes' rule

    with pytest.raises(ExistsError, match="key class 2"):
        reg.register(Clash)
    assert "clash" not in reg.names()
    with pytest.raises(InvalidInputError, match="known: annotation, grayscale, "):
        reg.get("nosuchtype")


def test_a_new_type_is_one_registration_and_shows_in_the_mount(core):
    reg = default_registry()
    reg.register(Notes)
    c = Dvid(engine=MemoryEngine(), registry=reg)
    root = c.node(c.new_repo("r").root)
    notes = c.new_instance(root, "n", "notes", text="hello")
    assert isinstance(notes, Notes) and c.data(root, "n") is notes
    assert c.node_info(root)["DataInstances"] == {"n": "notes"}
    assert c.instance_info(root, "n")["Base"]["TypeName"] == "notes"
    with pytest.raises(InvalidInputError):
        c.new_instance(root, "m", "notes", text="far too long")
    assert "m" not in c.instances(root)
    # the mount shows it (a directory with info.json) without knowing the type
    tree = Tree(c)
    inst = tree.lookup(tree.lookup(tree.lookup(ROOT, "r"), root.uuid), "n")
    assert [name for name, _, _ in tree.list(inst)] == ["info.json"]
    # the default registry does not know it
    with pytest.raises(InvalidInputError):
        core.new_instance(core.node(core.new_repo("q").root), "n", "notes")


def test_changes_are_published_for_every_kind_of_change(core):
    seen = _recorder(core)
    repo = core.new_repo("em")
    root = core.node(repo.root)
    gray = core.new_instance(root, "g", "grayscale", block_size=8)
    gray.write(root, (0, 0, 0), np.ones((8, 8, 8), np.uint8))
    core.commit(root, "done")
    child = core.branch(root, "side")
    other = core.branch(root)
    core.commit(child)
    core.commit(other)
    merged = core.merge([child, other])
    core.set_note(merged, "n")
    core.append_log(merged, ["a line"])
    r = repo.root
    done = dict(committed=True)
    assert seen == [Change(r), Change(r, root.uuid), Change(r, root.uuid, "g"), Change(r, root.uuid, **done),
                    Change(r, root.uuid), Change(r, child.uuid), Change(r, root.uuid), Change(r, other.uuid),
                    Change(r, child.uuid, **done), Change(r, other.uuid, **done),
                    Change(r, child.uuid), Change(r, other.uuid), Change(r, merged.uuid),
                    Change(r, merged.uuid), Change(r, merged.uuid)]


def test_failed_changes_publish_nothing_and_change_nothing(core):
    seen = _recorder(core)
    root = core.node(core.new_repo("em").root)
    gray = core.new_instance(root, "g", "grayscale", block_size=8)
    core.commit(root)
    seen.clear()
    before = list(core.engine.scan(b"", b"\xff" * 8))
    with pytest.raises(ReadOnlyError):
        gray.write(root, (0, 0, 0), np.ones((8, 8, 8), np.uint8))  # committed: read-only
    with pytest.raises(NotFoundError):
        core.data(root, "nope")
    assert seen == [] and list(core.engine.scan(b"", b"\xff" * 8)) == before


def test_a_failing_subscriber_does_not_fail_the_write(core):
    def broken(change):
        raise RuntimeError("subscriber bug")

    core.subscribe(broken)
    seen = _recorder(core)
    root = core.node(core.new_repo("em").root)
    gray = core.new_instance(root, "g", "grayscale", block_size=8)
    gray.write(root, (0, 0, 0), np.full((8, 8, 8), 5, np.uint8))
    assert (gray.read(core.view(root), (0, 0, 0), (8, 8, 8)) == 5).all()
    assert Change(root.repo, root.uuid, "g") in seen


def test_unsubscribe_and_generation(core):
    seen = []
    unsubscribe = core.subscribe(seen.append)
    root = core.node(core.new_repo("em").root)
    gray = core.new_instance(root, "g", "grayscale", block_size=8)
    g0 = core.generation(root, gray)
    gray.write(root, (0, 0, 0), np.ones((8, 8, 8), np.uint8))
    assert core.generation(root, gray) == g0 + 1  # one write, one step: caches key on it
    unsubscribe()
    n = len(seen)
    gray.write(root, (8, 0, 0), np.ones((8, 8, 8), np.uint8))
    assert len(seen) == n and core.generation(root, gray) == g0 + 2


def test_changes_arrive_in_the_writing_thread_after_the_write_is_visible(core):
    root = core.node(core.new_repo("em").root)
    gray = core.new_instance(root, "g", "grayscale", block_size=8)
    observed = []

    def check(change):  # a subscriber may read: the change is applied when it hears of it
        if change.instance == "g":
            observed.append((threading.current_thread().name,
                             int(gray.read(core.view(root), (0, 0, 0), (1, 1, 1))[0, 0, 0])))

    core.subscribe(check)
    t = threading.Thread(target=gray.write, args=(root, (0, 0, 0), np.full((8, 8, 8), 9, np.uint8)),
                         name="writer")
    t.start()
    t.join()
    assert observed == [("writer", 9)]


def test_reads_take_a_node_as_well_as_a_view(core):
    """`vol.read(node, …)` is what people write first (issue 15): it works."""
    root = core.node(core.new_repo("em").root)
    gray = core.new_instance(root, "g", "grayscale", block_size=8)
    labels = core.new_instance(root, "seg", "labels", block_size=8)
    src = np.arange(8 * 8 * 16, dtype=np.uint64).reshape(8, 8, 16) % 5 + 1
    gray.write(root, (0, 0, 0), src.astype(np.uint8))
    labels.write(root, (0, 0, 0), src)
    view = core.view(root)
    np.testing.assert_array_equal(gray.read(root, (0, 0, 0), (16, 8, 8)), gray.read(view, (0, 0, 0), (16, 8, 8)))
    np.testing.assert_array_equal(gray.read_slice(root, "xz", 3), src[:, 3, :].astype(np.uint8))
    assert labels.size(root, 2) == int((src == 2).sum())
    assert labels.bodies(root).tolist() == [1, 2, 3, 4, 5]
    assert labels.sparsevol(root, 3) == labels.sparsevol(view, 3)
