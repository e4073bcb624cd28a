"""Repo, node and instance records as they are stored (JSON in metadata keys)."""
from __future__ import annotations

import re
import uuid as uuidlib
from dataclasses import asdict, dataclass, field

from dvidfs.timestamps import iso, now

# \Z, not $: `$` also matches before a final newline, which let "evil\n" through.
UUID_RE = re.compile(r"^[0-9a-f]{32}\Z")
# Repo, branch and instance names (as git refs and DVID allow, and safe as file
# names): ASCII letters, digits and _ . + -, starting with a letter or digit.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}\Z")
MASTER = "master"  # how the unnamed default branch is shown (stored as "")
TAG_BRANCH = "tag-"  # DVID: a tag node is on branch "tag-<tag>"


def new_uuid() -> str:
    return uuidlib.uuid4().hex


@dataclass
class Node:
    uuid: str
    version_id: int
    repo: str                      # root UUID of the repo
    branch: str = ""               # "" is master
    note: str = ""
    log: list[str] = field(default_factory=list)
    locked: bool = False
    parents: list[str] = field(default_factory=list)
    children: list[str] = field(default_factory=list)
    created: float = field(default_factory=now)
    updated: float = field(default_factory=now)
    tag: str = ""                  # DVID `tag`: this committed node names the version of its parent

    @property
    def branch_name(self) -> str:
        return self.branch or MASTER

    def to_json(self) -> dict:
        return asdict(self)

    def info(self) -> dict:
        """DVID's node JSON field names."""
        return {"Branch": self.branch_name, "Note": self.note, "Log": list(self.log),
                "UUID": self.uuid, "VersionID": self.version_id, "Locked": self.locked,
                "Parents": list(self.parents), "Children": list(self.children),
                "Created": iso(self.created), "Updated": iso(self.updated),
                **({"Tag": self.tag} if self.tag else {})}


@dataclass
class Instance:
    name: str
    id: int
    typename: str                  # "grayscale" | "labels"
    created_in: int                # version id of the node that created it
    config: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Repo:
    root: str
    alias: str
    description: str = ""
    log: list[str] = field(default_factory=list)
    instances: dict[str, Instance] = field(default_factory=dict)
    created: float = field(default_factory=now)
    updated: float = field(default_factory=now)

    def to_json(self) -> dict:
        d = asdict(self)
        d["instances"] = {k: v.to_json() for k, v in self.instances.items()}
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Repo":
        d = dict(d)
        d["instances"] = {k: Instance(**v) for k, v in d.get("instances", {}).items()}
        return cls(**d)
