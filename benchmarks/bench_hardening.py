"""What the safety checks of issue 10 cost, as ratios against the work they guard (same run).

- SAM 2 config allow-list (walk of every ``_target_`` before hydra) vs building the tiny model.
- Cache ownership check (``is_ours``: read the marker) and ``cache_info`` over N entries.
- ``SliceCache.is_done`` (now also checks the group and the marker's type) vs one cached-slice read.

Run: ``python benchmarks/bench_hardening.py [--entries 200]``. CPU only, random-weight tiny models.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def timed(fn, repeat=7):
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=200)
    args = ap.parse_args()

    from napari_sam_stack import _checkpoints as ck
    from napari_sam_stack import load_model
    from napari_sam_stack._cache import _write_marker, is_ours
    from napari_sam_stack._cache_admin import cache_info
    from napari_sam_stack.embeddings import EmbeddingStore
    from napari_sam_stack.normalise import Frames
    from napari_sam_stack.testing import tiny_sam2_checkpoint

    tmp = Path(tempfile.mkdtemp())
    ckpt, config = tiny_sam2_checkpoint(tmp / "m")
    cfg, path = ck.sam2_config(config)
    ck.shipped_targets()  # (once per process)
    check = timed(lambda: ck.check_sam2_targets(cfg, path))
    load = timed(lambda: load_model(checkpoint=ckpt, config=config, device="cpu"), repeat=3)
    print(f"config allow-list check {check * 1e3:.2f} ms vs load_model {load * 1e3:.0f} ms: ratio {check / load:.4f}")

    root = tmp / "cache"
    for i in range(args.entries):
        d = root / f"{i:024x}"
        d.mkdir(parents=True)
        _write_marker(d)
    one = timed(lambda: is_ours(root / f"{0:024x}"), repeat=50)
    info = timed(lambda: cache_info(root), repeat=3)
    print(f"is_ours {one * 1e6:.0f} us per folder; cache_info over {args.entries} entries {info * 1e3:.0f} ms")

    model = load_model(checkpoint=ckpt, config=config, device="cpu")
    stack = np.random.default_rng(0).integers(0, 256, (4, 64, 64), dtype=np.uint8)
    store = EmbeddingStore(Frames(stack, 0), model, cache_dir=tmp / "c2")
    store.compute()
    reader = EmbeddingStore(Frames(stack, 0), model, cache_dir=tmp / "c2", lru_slices=1)
    done = timed(lambda: reader._disk.is_done(2), repeat=200)

    def read():
        reader._mem.clear()
        reader.get(2)

    load_slice = timed(read, repeat=20)
    print(f"is_done {done * 1e6:.0f} us vs a cached-slice load {load_slice * 1e3:.2f} ms: ratio {done / load_slice:.4f}")


if __name__ == "__main__":
    main()
