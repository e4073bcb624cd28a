"""What a store directory holds besides the engine's files.

    <store>/leveldb/           the LevelDB engine (dvidfs/store/leveldb.py)
    <store>/mounted-at.json    written while a mount or `dvidfs serve` holds the store: where, which pid
    <store>/mount.log          the background mount's log

The marker exists only to *explain* a busy store: LevelDB admits one process,
so a second `dvidfs` command on a mounted store fails, and the marker lets that
failure say where the store is mounted and how to get at it.  It is advisory:
the message names the mount only while the marker's pid is alive and its
mount point is a mounted dvidfs, so a stale marker (after kill -9) or a CLI
process holding the store gets the generic message.

The store directory may be writable by people other than the one who mounts
it (often root), so nothing here follows a name that someone else could have
replaced with a symbolic link, a hard link or a FIFO:

- the marker is written to a fresh temporary file (O_CREAT|O_EXCL|O_NOFOLLOW)
  and `os.replace`d onto its name, which replaces whatever is there (a planted
  link included) without following it;
- the log is opened with O_NOFOLLOW and must be a regular file with one link,
  else the mount refuses with one line naming the path (it is never moved
  aside: the user decides what to do with a file they did not expect);
- reading the marker uses O_NOFOLLOW|O_NONBLOCK, reads at most 64 KiB of a
  regular file and tolerates any content;
- `clear_mounted` removes only a regular file that names this process.
"""
from __future__ import annotations

import errno
import json
import os
import re
import secrets
import stat

from dvidfs.errors import DvidfsError

MOUNT_MARKER = "mounted-at.json"
MOUNT_LOG = "mount.log"

_MAX_MARKER = 64 << 10
_URL_RE = re.compile(r"^http://[0-9A-Za-z.:\[\]]{1,100}\Z")  # what `dvidfs serve` writes; nothing else is shown
_LOG_MODE = 0o600


def mark_mounted(store_path: str, mountpoint: str | None, url: str | None = None) -> None:
    """Atomically (re)write the marker as a regular file of ours: where this
    process mounts the store and/or the URL `dvidfs serve` answers at."""
    store_path = os.fspath(store_path)
    info: dict = {"pid": os.getpid()}
    if mountpoint:
        info["mountpoint"] = os.path.abspath(mountpoint)
    if url:
        info["url"] = url
    data = json.dumps(info).encode()
    target = os.path.join(store_path, MOUNT_MARKER)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(100):
        tmp = os.path.join(store_path, f".{MOUNT_MARKER}.{os.getpid()}.{secrets.token_hex(8)}.tmp")
        try:
            fd = os.open(tmp, flags, 0o644)
        except FileExistsError:
            continue
        except OSError as exc:
            raise DvidfsError(f"cannot write the mount marker in {store_path}: {exc.strerror}") from None
        break
    else:
        raise DvidfsError(f"cannot write the mount marker in {store_path}: no free temporary name")
    try:
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise DvidfsError(f"cannot write the mount marker {target}: {exc.strerror}") from None


def _read_marker(store_path: str) -> dict | None:
    """The marker's JSON object if it is a regular file (not followed through a
    link, never blocking on a FIFO) holding one; None for anything else."""
    try:
        fd = os.open(os.path.join(store_path, MOUNT_MARKER),
                     os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0))
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        raw = os.read(fd, _MAX_MARKER + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    if len(raw) > _MAX_MARKER:
        return None
    try:
        info = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return info if isinstance(info, dict) else None


def _marker_pid(info: dict) -> int | None:
    pid = info.get("pid")
    return pid if type(pid) is int and 0 < pid < 1 << 31 else None


def clear_mounted(store_path: str) -> None:
    """Remove the marker if it is our own: a regular file naming this process.
    Anything else at that name (a link, a directory, another process's marker)
    is left alone; nothing is ever followed."""
    path = os.path.join(os.fspath(store_path), MOUNT_MARKER)
    info = _read_marker(os.fspath(store_path))
    if info is None or _marker_pid(info) != os.getpid():
        return
    try:
        os.unlink(path)  # unlink removes the name itself, never a link's target
    except OSError:
        pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def _unescape_mounts_field(field: str) -> str:
    """/proc/mounts writes space, tab, newline and backslash as \\ooo."""
    out, i = [], 0
    while i < len(field):
        code = field[i + 1:i + 4]
        if field[i] == "\\" and len(code) == 3 and all(c in "01234567" for c in code):
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _is_dvidfs_mount(mountpoint: str) -> bool:
    """Whether `mountpoint` is in /proc/mounts as a dvidfs (fuse.dvidfs) mount."""
    try:
        real = os.path.realpath(mountpoint)
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[2] == "fuse.dvidfs" and _unescape_mounts_field(parts[1]) == real:
                    return True
    except (OSError, ValueError):
        return False
    return False


def busy_message(store_path: str) -> str:
    """Why the store cannot be opened, as one line a user can act on."""
    generic = f"store {store_path} is in use by another process (LevelDB admits one process at a time)"
    info = _read_marker(os.fspath(store_path))
    if info is None:
        return generic
    pid, mountpoint, url = _marker_pid(info), info.get("mountpoint"), info.get("url")
    if pid is None or not _pid_alive(pid):
        return generic
    mounted = (isinstance(mountpoint, str) and bool(mountpoint) and "\0" not in mountpoint
               and "\n" not in mountpoint and os.path.isabs(mountpoint) and _is_dvidfs_mount(mountpoint))
    served = isinstance(url, str) and _URL_RE.match(url) is not None
    if served:
        where = f" and mounts it at {mountpoint}" if mounted else ""
        return (f"store {store_path} is in use: `dvidfs serve` (pid {pid}) serves it at {url}{where}; "
                f"use the HTTP API{' or the mount' if mounted else ''}, or stop it (kill -TERM {pid})")
    if not mounted:
        return generic
    return (f"store {store_path} is in use: it is mounted at {mountpoint} (pid {pid}); "
            f"work through the mount or unmount it first (`dvidfs umount {mountpoint}`)")


def open_log(store_path: str) -> int:
    """An O_APPEND file descriptor on <store>/mount.log, created 0600 if missing.

    Refuses (DvidfsError, one line naming the path) a name that is a symbolic
    link, a hard link to another file, or anything but a regular file, instead
    of writing through it."""
    path = os.path.join(os.fspath(store_path), MOUNT_LOG)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC \
        | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags, _LOG_MODE)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DvidfsError(f"refusing to write the mount log {path}: it is a symbolic link "
                              f"(remove it and mount again)") from None
        if exc.errno == errno.ENXIO:  # a FIFO nobody reads
            raise DvidfsError(f"refusing to write the mount log {path}: it is not a regular file "
                              f"(remove it and mount again)") from None
        raise DvidfsError(f"cannot open the mount log {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise DvidfsError(f"refusing to write the mount log {path}: it is not a regular file "
                              f"(remove it and mount again)")
        if st.st_nlink != 1:
            raise DvidfsError(f"refusing to write the mount log {path}: it has {st.st_nlink} hard links "
                              f"(remove it and mount again)")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def log_tail(log_fd: int, limit: int = 64 << 10) -> str:
    """The last non-empty line of the log behind `log_fd` (an fd from
    `open_log`), read through /proc/self/fd so it is the very file we wrote,
    whatever now has its name."""
    try:
        fd = os.open(f"/proc/self/fd/{log_fd}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return "no output"
    try:
        size = os.fstat(fd).st_size
        data = os.pread(fd, limit, max(0, size - limit))
    except OSError:
        return "no output"
    finally:
        os.close(fd)
    lines = [l.strip() for l in data.decode(errors="replace").splitlines() if l.strip()]
    return lines[-1] if lines else "no output"


def check_safe_to_open(store_path: str) -> None:
    """As root, refuse a store that someone else could have prepared: LevelDB
    creates its files (`NNNNNN.log`, `MANIFEST-…`) with predictable names and
    follows links there, so whoever can write `<store>/` or `<store>/leveldb/`
    could make a root process overwrite any file.  Other users are protected by
    the kernel's own permission checks, so only root is checked."""
    if os.geteuid() != 0:
        return
    for d in (store_path, os.path.join(store_path, "leveldb")):
        try:
            st = os.lstat(d)
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(st.st_mode):
            raise DvidfsError(f"refusing to open {d} as root: it is a symbolic link")
        if st.st_uid != 0 or st.st_mode & 0o022:
            raise DvidfsError(
                f"refusing to open store {store_path} as root: {d} can be written by another user "
                f"(owner uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):o}); open it as its owner, "
                f"or `chown -R root {store_path} && chmod -R go-w {store_path}`")
