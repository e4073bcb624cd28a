"""One error hierarchy for every layer.

Each error carries the errno the filesystem should return, so `dvidfs/fs/` can
map any failure to a proper errno without knowing which layer raised it, and the
CLI can print `str(err)` as one readable line.  Anything that is *not* a
`DvidfsError` is a bug and is allowed to surface as EIO / a traceback.
"""
from __future__ import annotations

import errno


class DvidfsError(Exception):
    """Base class: a user-facing failure with a readable message and an errno."""

    errno: int = errno.EIO

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:  # one line, no class name: this is what users read
        return self.message


class NotFoundError(DvidfsError):
    """Unknown repo, node, UUID prefix, data instance, label, file."""

    errno = errno.ENOENT


class InvalidInputError(DvidfsError):
    """Malformed image / sparsevol / argument; nothing was written."""

    errno = errno.EINVAL


class ReadOnlyError(DvidfsError):
    """Write to a committed (locked) node."""

    errno = errno.EROFS


class ExistsError(DvidfsError):
    """A name (repo, branch, instance) that must be unique is taken."""

    errno = errno.EEXIST


class AmbiguousError(DvidfsError):
    """A UUID prefix that matches several nodes."""

    errno = errno.EINVAL


class ConflictError(DvidfsError):
    """A merge whose parents changed the same key differently, or a read that
    finds different values on different parent paths of a merge node."""

    errno = errno.EBUSY


class StoreBusyError(DvidfsError):
    """The LevelDB store is held by another process (usually a mount)."""

    errno = errno.EBUSY



class NoSpaceError(DvidfsError):
    """The store's disk is full: the write was not applied (nothing half-applied)."""

    errno = errno.ENOSPC


class TooLargeError(DvidfsError):
    """More data than the target can hold (a slice file bigger than any image of
    its plane, a split bigger than its body): refused before it is buffered."""

    errno = errno.EFBIG
