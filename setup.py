"""Build the two native helpers; everything else is in pyproject.toml.

`dvidfs.formats._blockcopy` decodes lz4 blocks and copies them into slices with
the GIL released (see dvidfs/formats/blockcopy.py for why); it links the system
liblz4 (Debian: liblz4-dev, installed by scripts/setup).
`dvidfs.formats._labelblock` decodes one plane of a DVID label block (a fast
path in front of the numpy decoder in dvidfs/formats/labelblock.py).
"""
from setuptools import Extension, setup

CFLAGS = ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"]

setup(
    ext_modules=[
        Extension(
            "dvidfs.formats._blockcopy",
            sources=["dvidfs/formats/_blockcopy.c"],
            libraries=["lz4"],
            extra_compile_args=CFLAGS,
        ),
        Extension("dvidfs.formats._labelblock", sources=["dvidfs/formats/_labelblock.c"],
                  extra_compile_args=CFLAGS),
    ]
)
