"""Annotation bookkeeping at the scale of a real job: many objects on a big stack.

No network, no model compute: objects get mask prompts (stored as given, no decoder call),
so what is measured is the annotation's own cost, printed as ratios measured in this run:

- masks: bytes of the compact per-slice crops vs a dense (N, Y, X) bool volume per object;
- commit: one object into the labels (one LabelsEdit), and commit of all objects at once;
- autosave after one commit (unchanged label slices hard-linked) vs a full save of the project;
- open of the project (every digest checked).

    python benchmarks/bench_annotation.py --slices 200 --size 512 --objects 200
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slices", type=int, default=200)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--objects", type=int, default=200)
    ap.add_argument("--extent", type=int, default=20, help="slices each object spans")
    ap.add_argument("--radius", type=int, default=15, help="pixels")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-annotation-"))
    os.environ["NAPARI_SAM_STACK_CACHE"] = str(tmp / "cache")
    import napari_sam_stack as nss
    from napari_sam_stack.testing import load_tiny_sam2

    model = load_tiny_sam2(tmp / "model")
    n, s = args.slices, args.size
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (n, s, s), dtype=np.uint8)
    a = nss.Annotation(image, model, axis=0, in_memory=True, autosave=True, autosave_every=1e9)
    yy, xx = np.mgrid[:s, :s]
    t0 = time.perf_counter()
    for _ in range(args.objects):
        i = a.new_object()
        z0 = int(rng.integers(0, n - args.extent))
        cy, cx = rng.integers(args.radius, s - args.radius, 2)
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= args.radius ** 2
        for z in range(z0, z0 + args.extent):
            a.objects[i].masks.set(z, np.where(disk, np.uint8(80), np.uint8(0)))  # as a propagation stores them
        a.add_prompt(i, z0, mask=disk)
    t_add = time.perf_counter() - t0
    stored = sum(o.masks.nbytes for o in a.objects.values())
    dense = args.objects * n * s * s
    print(f"{args.objects} objects x {args.extent} slices on {n} x {s} x {s}")
    print(f"masks: {stored / 1e6:.1f} MB compact vs {dense / 1e9:.1f} GB dense bool: ratio {stored / dense:.2e}")
    print(f"adding them: {t_add:.2f} s")

    ids = list(a.objects)
    t0 = time.perf_counter()
    a.autosave = False
    a.commit(ids[1:])
    t_all = time.perf_counter() - t0
    a.autosave = True
    t0 = time.perf_counter()
    first = a.maybe_autosave(force=True)
    t_full_auto = time.perf_counter() - t0
    t0 = time.perf_counter()
    a.autosave = False
    a.commit([ids[0]])
    t_one = time.perf_counter() - t0
    a.autosave = True
    t0 = time.perf_counter()
    second = a.maybe_autosave(force=True)
    t_linked = time.perf_counter() - t0
    assert first is not None and second is not None
    t0 = time.perf_counter()
    a.save(tmp / "p.sam")
    t_save = time.perf_counter() - t0
    t0 = time.perf_counter()
    b = nss.Annotation.open(tmp / "p.sam", image=image, model=model)
    t_open = time.perf_counter() - t0
    assert np.array_equal(b.labels, a.labels)
    print(f"commit of {len(ids) - 1} objects (one edit): {t_all:.2f} s; commit of one object: {t_one:.3f} s")
    print(f"autosave after that commit (linked): {t_linked:.3f} s vs first (full) autosave {t_full_auto:.3f} s: "
          f"ratio {t_linked / t_full_auto:.2f}")
    print(f"save {t_save:.2f} s, open (all digests checked) {t_open:.2f} s")


if __name__ == "__main__":
    main()
