"""What checking a cached slice's pixels adds to reading it from the embeddings cache.

A slice read from the disk cache is only trusted when the SHA-256 of the image's
current raw pixels equals the digest recorded when it was encoded. That costs one
read of the image slice (``Frames.raw``) and one hash, on every disk load (not on
hits of the in-memory LRU). Measured here for uint16 slices of 512x512 and
2048x2048, the image held in RAM (numpy) and as a zarr v3 array on disk (one
compressed chunk per slice), against the load the store did anyway: one cached slice
of SAM 2.1 hiera_t at 1024 (3 FPN levels, 16 MB float32) read back through the cache.
Median of ``--repeat`` runs each; the files are in the OS page cache (warm).

    python benchmarks/bench_slice_digest.py [--repeat 15]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

from napari_sam_stack._cache import SliceCache, pixel_digest
from napari_sam_stack.normalise import Frames

# SAM 2.1 hiera_t at image_size 1024: backbone_fpn after conv_s0 / conv_s1, and the top level
HIERA_T_LEVELS = {"fpn_0": (32, 256, 256), "fpn_1": (64, 128, 128), "fpn_2": (256, 64, 64)}


def median_ms(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=15)
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cache = SliceCache(tmp / "cache", {"bench": 1}, 2)
        levels = {k: (s, "float32") for k, s in HIERA_T_LEVELS.items()}
        cache.create(levels, {}, {})
        cache.write(0, {k: rng.standard_normal(s, dtype=np.float32) for k, s in HIERA_T_LEVELS.items()}, "x")
        load = median_ms(lambda: cache.read(0), args.repeat)
        for n in (512, 2048):
            vol = rng.integers(0, 4096, (3, n, n), dtype=np.uint16)  # 12-bit camera-like data
            z = zarr.create_array(tmp / f"img{n}.zarr", shape=vol.shape, chunks=(1, n, n), dtype=vol.dtype)
            z[:] = vol
            for where, image in (("numpy (RAM)", vol), ("zarr (disk)", z)):
                frames = Frames(image, 0, contrast_limits=(0, 4095))
                check = median_ms(lambda f=frames: pixel_digest(f.raw(1)), args.repeat)
                raw = np.asarray(frames.raw(1))
                hash_only = median_ms(lambda r=raw: pixel_digest(r), args.repeat)
                rows.append({"slice": f"{n}x{n} uint16", "image": where, "check_ms": check, "hash_ms": hash_only,
                             "load_ms": load})
    print(f"{platform.processor() or platform.machine()}, numpy {np.__version__}, zarr {zarr.__version__}")
    print(f"cached slice load (SAM 2.1 hiera_t, 16 MB float32): {load:.1f} ms")
    print("| slice | image | added per disk load (read + SHA-256) | of which SHA-256 | vs the cached-slice load |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['slice']} | {r['image']} | {r['check_ms']:.2f} ms | {r['hash_ms']:.2f} ms "
              f"| {r['check_ms'] / r['load_ms']:.2f}x |")
    return rows


if __name__ == "__main__":
    main()
