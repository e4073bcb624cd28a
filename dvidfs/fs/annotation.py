"""annotation instances in the mount: elements as JSON lines, tag and body queries as files.

    <ann>/info.json                 the instance's info (fs/instances.py)
    <ann>/elements.jsonl            every element, one JSON object a line, block by block (exact size);
                                    in open nodes each line written is an element to add or replace
                                    (`>>` appends, `>` too: nothing is ever deleted through it), stored
                                    at close, all or nothing: one bad line -> EINVAL, nothing stored
    <ann>/tags/<tag>.json           the elements with that tag (tags that cannot be file names, with a
                                    "/" or named "." or "..", are not listed)
    <ann>/labels/<id>.json          when synced with a labels instance: the elements in body <id>
                                    (data/annotation.py `label_elements`), the bodies holding elements listed

Element files hold full elements (with "Rels"), one per line inside a JSON
list, so `grep` finds one and `json.load` reads them all.  Lines written to
elements.jsonl that equal what is stored change nothing, so appending to the
file (whose content comes first at an open without O_TRUNC) stores just the
new lines.  Body files follow the labels instance, not the annotation: their
content is computed at every open (never cached), while a size the kernel
holds from an earlier stat of an open node may lag a merge or split until the
annotation itself is written; `cat` reads to the end regardless.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING

from dvidfs.data.annotation import check_element, synced_labels
from dvidfs.errors import InvalidInputError, NotFoundError
from dvidfs.fs.entry import Attr, DirEntry, EditableFile, Entry

if TYPE_CHECKING:
    from dvidfs.fs.tree import Tree

ELEMENTS = "elements.jsonl"
MAX_ELEMENTS_FILE = 1 << 30   # the most an elements.jsonl written through the mount may hold (it is buffered)


def annotation_children(inst: Entry, tree: "Tree") -> list[tuple[str, Entry]]:
    out: list[tuple[str, Entry]] = [(ELEMENTS, inst.child(ElementsFile, name=ELEMENTS)),
                                    ("tags", inst.child(TagsDir, name="tags"))]
    if inst.obj.sync_name(tree.core.view(inst.node)) is not None:
        out.append(("labels", inst.child(LabelsDir, name="labels")))
    return out


def elements_lines(elems) -> bytes:
    return "".join(json.dumps(e) + "\n" for e in elems).encode()


def elements_list(elems) -> bytes:
    """A JSON list, one element a line."""
    if not elems:
        return b"[]\n"
    return ("[\n" + ",\n".join(json.dumps(e) for e in elems) + "\n]\n").encode()


def parse_lines(data: bytes, where: str) -> list[dict]:
    """Elements from JSON lines (blank lines skipped); InvalidInputError names the bad line."""
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInputError(f"{where}: not UTF-8 text") from None
    elems = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            e = json.loads(line)
        except ValueError as exc:
            raise InvalidInputError(f"{where} line {n}: not JSON ({exc}); write one element a line") from None
        try:
            elems.append(check_element(e, name=f"line {n}"))
        except InvalidInputError as exc:
            raise InvalidInputError(f"{where}: {exc}") from None
    return elems


class ElementsFile(EditableFile):
    # `>>` appends after the elements (unchanged lines store nothing)
    max_upload = MAX_ELEMENTS_FILE

    def read(self, tree: "Tree") -> bytes:
        return elements_lines(self.obj.all_elements(tree.core.view(self.node)))

    def upload(self, tree: "Tree", data: bytes) -> str:
        elems = parse_lines(data, f"{self.data}/{ELEMENTS}")
        n = self.obj.put_elements(self.node, elems)
        return f"stored {n} changed element(s) of {len(elems)} in {self.data}"

    def describe(self) -> str:
        return f"{self.data}/{ELEMENTS}"


def _file_name(tag: str) -> bool:
    return bool(tag) and "/" not in tag and tag not in (".", "..") and len(tag.encode()) <= 250


class TagsDir(DirEntry):
    def attr(self, tree: "Tree") -> Attr:
        return Attr("dir", 0, False, tree.mtime(self.node), self.locked)

    def children(self, tree: "Tree") -> list[tuple[str, Entry]]:
        return [(f"{t}.json", self.child(TagFile, name=t))
                for t in self.obj.tags(tree.core.view(self.node)) if _file_name(t)]

    def lookup(self, tree: "Tree", name: str) -> Entry:
        if name.endswith(".json") and name[:-5] in self.obj.tags(tree.core.view(self.node)):
            return self.child(TagFile, name=name[:-5])
        raise NotFoundError(f"no tag {name!r} in {self.data}")

    def describe(self) -> str:
        return f"{self.data}/tags"


class TagFile(Entry):
    rendered = True

    def attr(self, tree: "Tree") -> Attr:
        return Attr("file", len(tree.read(self)), False, tree.mtime(self.node), self.locked)

    def read(self, tree: "Tree") -> bytes:
        return elements_list(self.obj.tag_elements(tree.core.view(self.node), self.name, rels=True))

    def describe(self) -> str:
        return f"{self.data}/tags/{self.name}.json"


class LabelsDir(DirEntry):
    def attr(self, tree: "Tree") -> Attr:
        return Attr("dir", 0, False, tree.mtime(self.node), self.locked)

    def children(self, tree: "Tree") -> list[tuple[str, Entry]]:
        labels = synced_labels(tree.core, self.node, self.obj)
        bodies = self.obj.label_counts(tree.core.view(self.node), labels)
        return [(f"{b}.json", self.child(LabelFile, coord=b)) for b in sorted(bodies)]

    def lookup(self, tree: "Tree", name: str) -> Entry:
        stem = name[:-5] if name.endswith(".json") else ""
        if stem.isdigit() and not stem.startswith("0") and int(stem) < 2**64:
            e = self.child(LabelFile, coord=int(stem))
            if e.elements(tree):
                return e
        raise NotFoundError(f"no elements in body {name!r} of {self.data}")

    def describe(self) -> str:
        return f"{self.data}/labels"


class LabelFile(Entry):
    slow_attr = True   # a body query: answered in a worker thread

    def elements(self, tree: "Tree") -> list[dict]:
        labels = synced_labels(tree.core, self.node, self.obj)
        return self.obj.label_elements(tree.core.view(self.node), labels, self.coord, rels=True)

    def attr(self, tree: "Tree") -> Attr:
        return Attr("file", len(self.read(tree)), False, tree.mtime(self.node), self.locked)

    def read(self, tree: "Tree") -> bytes:
        return elements_list(self.elements(tree))

    def describe(self) -> str:
        return f"{self.data}/labels/{self.coord}.json"
