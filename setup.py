"""Build the one native helper; everything else is in pyproject.toml.

`dvidfs.formats._blockcopy` decodes lz4 blocks and copies them into slices with
the GIL released (see dvidfs/formats/blockcopy.py for why).  It links the
system liblz4 (Debian: liblz4-dev, installed by scripts/setup).
"""
from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "dvidfs.formats._blockcopy",
            sources=["dvidfs/formats/_blockcopy.c"],
            libraries=["lz4"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
        )
    ]
)
