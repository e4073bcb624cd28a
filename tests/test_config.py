"""Config: defaults < DVIDFS_* environment < explicit flags, sizes with suffixes,
and the flags of `dvidfs mount` reaching the mount process."""
from __future__ import annotations

import argparse
import dataclasses

import pytest

from dvidfs.config import Config, parse_bytes
from dvidfs.errors import InvalidInputError


def test_sizes_take_suffixes():
    assert parse_bytes("512") == 512
    assert parse_bytes("4K") == 4 * 1024
    assert parse_bytes("256M") == 256 * 1024 ** 2
    assert parse_bytes("1.5g") == int(1.5 * 1024 ** 3)
    assert parse_bytes("64MiB") == 64 * 1024 ** 2
    for bad in ("lots", "-1M", "", "M"):
        with pytest.raises(InvalidInputError):
            parse_bytes(bad)


def test_environment_overrides_defaults_and_flags_override_environment():
    default = Config()
    env = {"DVIDFS_RENDER_THREADS": "3", "DVIDFS_READAHEAD": "0", "DVIDFS_BLOCK_CACHE": "1G"}
    cfg = Config.load(env)
    assert (cfg.render_threads, cfg.readahead, cfg.block_cache) == (3, 0, 1 << 30)
    assert cfg.render_cache == default.render_cache  # untouched
    cfg = Config.load(env, render_threads=2, readahead=None)  # None: flag not given
    assert (cfg.render_threads, cfg.readahead) == (2, 0)


def test_bad_values_are_clear_errors():
    with pytest.raises(InvalidInputError, match="DVIDFS_RENDER_THREADS"):
        Config.load({"DVIDFS_RENDER_THREADS": "many"})
    with pytest.raises(InvalidInputError, match="at least 1"):
        Config.load({}, render_threads=0)
    with pytest.raises(InvalidInputError, match="unknown setting"):
        Config.load({}, colour="blue")


def test_every_field_has_a_flag_and_flags_round_trip():
    parser = argparse.ArgumentParser()
    Config.add_arguments(parser)
    want = Config(block_cache=3 << 20, render_cache=5 << 20, readahead=0, render_threads=2,
                  switch_interval=0.002, leveldb_write_buffer=8 << 20, leveldb_block_size=16 << 10,
                  leveldb_cache=32 << 20, body_listing=50, http_threads=3, http_max_body=7 << 20,
                  http_max_reply=9 << 20)
    assert all(getattr(want, f.name) != f.default for f in dataclasses.fields(Config))
    args = parser.parse_args(want.to_args())  # what the background mount passes its child
    assert Config.from_args(args) == want
    args = parser.parse_args(["--readahead", "64M"])
    assert Config.from_args(args).readahead == 64 << 20
