#!/usr/bin/env python
"""Time PNG encoders on one 1024x1024 8-bit slice (not a test).

    .venv/bin/python scripts/bench_png.py [--size 1024] [--repeat 50]

Prints ms per slice and the ratio to encode_png_stored, for a noisy slice
(EM-like texture) and an all-zero slice, plus the output sizes.
"""
from __future__ import annotations

import argparse
import io
import os
import struct
import sys
import time
import zlib

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from dvidfs.formats.images import encode_png_stored, encode_tiff, png_size  # noqa: E402


def pillow_png(level):
    def enc(img):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG", compress_level=level)
        return buf.getvalue()
    return enc


def zlib_png(level):
    """Hand-written PNG like encode_png_stored, but zlib-compressed at `level`."""
    def chunk(ctype, payload):
        return (struct.pack(">I", len(payload)) + ctype + payload
                + struct.pack(">I", zlib.crc32(ctype + payload)))

    def enc(img):
        h, w = img.shape
        raw = np.empty((h, w + 1), np.uint8)
        raw[:, 0] = 0
        raw[:, 1:] = img
        ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
        return b"".join((b"\x89PNG\r\n\x1a\n", chunk(b"IHDR", ihdr),
                         chunk(b"IDAT", zlib.compress(raw, level)), chunk(b"IEND", b"")))
    return enc


def bench(fn, img, repeat):
    fn(img)                                   # warm up (scratch buffers, imports)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(repeat):
            out = fn(img)
        best = min(best, (time.perf_counter() - t0) / repeat)
    return best * 1e3, len(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=30)
    args = ap.parse_args()
    n = args.size
    rng = np.random.default_rng(0)
    # EM-ish: smooth structure plus noise (random bytes alone are incompressible)
    y, x = np.mgrid[0:n, 0:n]
    em = (128 + 60 * np.sin(x / 17.0) * np.cos(y / 23.0) + rng.normal(0, 20, (n, n)))
    slices = {"EM-like": np.clip(em, 0, 255).astype(np.uint8),
              "zeros": np.zeros((n, n), np.uint8)}
    coders = [
        ("encode_png_stored", encode_png_stored),
        ("zlib level 0 (stored), filter 0", zlib_png(0)),
        ("zlib level 1, filter 0", zlib_png(1)),
        ("Pillow compress_level=0", pillow_png(0)),
        ("Pillow compress_level=1", pillow_png(1)),
        ("encode_tiff (uint8, ImageJ)", encode_tiff),
    ]
    print(f"{n}x{n} uint8 slice, best of 3 x {args.repeat}; "
          f"png_size = {png_size(n, n)} bytes")
    for name, img in slices.items():
        print(f"\n{name}:")
        base = None
        for label, fn in coders:
            ms, size = bench(fn, img, args.repeat)
            base = base or ms
            print(f"  {label:34s} {ms:7.2f} ms  x{ms / base:6.1f}  {size:>9d} bytes")


if __name__ == "__main__":
    main()
