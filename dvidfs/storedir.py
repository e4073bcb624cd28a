"""What a store directory holds besides the engine's files.

    <store>/leveldb/           the LevelDB engine (dvidfs/store/leveldb.py)
    <store>/mounted-at.json    written while a mount holds the store: where, which pid
    <store>/mount.log          the background mount's log

The marker exists only to *explain* a busy store: LevelDB admits one process,
so a second `dvidfs` command on a mounted store fails, and the marker lets that
failure say where the store is mounted and how to get at it.  It is advisory:
a stale marker (after kill -9) only changes the wording of that message.
"""
from __future__ import annotations

import json
import os

MOUNT_MARKER = "mounted-at.json"
MOUNT_LOG = "mount.log"


def mark_mounted(store_path: str, mountpoint: str) -> None:
    with open(os.path.join(store_path, MOUNT_MARKER), "w") as f:
        json.dump({"mountpoint": os.path.abspath(mountpoint), "pid": os.getpid()}, f)


def clear_mounted(store_path: str) -> None:
    try:
        os.unlink(os.path.join(store_path, MOUNT_MARKER))
    except FileNotFoundError:
        pass


def busy_message(store_path: str) -> str:
    """Why the store cannot be opened, as one line a user can act on."""
    try:
        with open(os.path.join(store_path, MOUNT_MARKER)) as f:
            info = json.load(f)
        return (f"store {store_path} is in use: it is mounted at {info['mountpoint']} (pid {info['pid']}); "
                f"work through the mount or unmount it first (`dvidfs umount {info['mountpoint']}`)")
    except (OSError, ValueError, KeyError, TypeError):
        return f"store {store_path} is in use by another process (LevelDB admits one process at a time)"
