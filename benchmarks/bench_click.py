"""Click -> mask latency on a cached embedding, ours vs the official predictors, same run.

Models at full size with random weights (no download): SAM 1 vit_b
(``sam_model_registry["vit_b"](checkpoint=None)``) and SAM 2.1 hiera_t
(``build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", None)``). One 512 x 512 slice is
encoded once; the official predictor gets exactly that embedding (SAM 1: ``features``;
SAM 2: what ``set_image`` keeps), so both sides time the prompt encoder, mask decoder
and upsampling only. Each click is timed on both sides back to back, in alternating
order, so load from other processes hits both alike.

Scenarios: "first click" (one point, 3 candidates, as SAM advises) and "refine"
(3 points + the previous low-res logits as mask prompt, one mask).

    python benchmarks/bench_click.py [--clicks 30] [--threads 2] [--models sam,sam2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch


def build(family: str):
    from napari_sam_stack import load_model

    torch.manual_seed(0)
    if family == "sam":
        from segment_anything import sam_model_registry

        return load_model(sam_model_registry["vit_b"](checkpoint=None), device="cpu"), "SAM 1 vit_b"
    from sam2.build_sam import build_sam2

    module = build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", None, device="cpu")
    return load_model(module, device="cpu"), "SAM 2.1 hiera_t"


def official_on(model, emb):
    """The official image predictor holding ``emb`` as if set_image had computed it."""
    if model.family == "sam":
        from segment_anything import SamPredictor

        p = SamPredictor(model.module)
        p.features, p.original_size, p.input_size = emb.features, emb.original_size, emb.input_size
        p.is_image_set = True
        return p
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    from napari_sam_stack.predict import _prepare_sam2

    p = SAM2ImagePredictor(model.module)
    p._features = _prepare_sam2(model, emb)  # what set_image would keep for this image
    p._orig_hw, p._is_image_set = [emb.original_size], True
    return p


def image(size=512):
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:size, :size]
    img = 40 + 20 * rng.random((size, size))
    for cy, cx, r in rng.uniform([40, 40, 12], [size - 40, size - 40, 40], (25, 3)):
        img += 150 * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * r * r))
    return np.clip(img, 0, 255).astype(np.uint8)


def clicks(n, size, seed=1):
    rng = np.random.default_rng(seed)
    return [rng.uniform(10, size - 10, (3, 2)) for _ in range(n)]


def bench(family: str, n: int):
    from napari_sam_stack.predict import predict
    from napari_sam_stack.prompts import make_prompt
    from napari_sam_stack.session import Session

    model, label = build(family)
    params = sum(p.numel() for p in model.module.parameters())
    dec = model.module.mask_decoder if family == "sam" else model.module.sam_mask_decoder
    dparams = sum(p.numel() for p in dec.parameters())
    img = image()
    s = Session(img, model, axis=None, in_memory=True)
    t = time.perf_counter()
    emb = s.embeddings.get(0)
    enc = time.perf_counter() - t
    ref = official_on(model, emb)
    shape = img.shape
    results = {}
    for scen in ("first click", "refine"):
        ours, theirs, diffs = [], [], []
        prev_ours = prev_ref = None
        for k, pts in enumerate(clicks(n + 3, shape[0])):
            if scen == "first click":
                prompt = make_prompt(shape, pts[:1])
                kw = dict(multimask_output=True)
                multi = None
            else:
                prompt = make_prompt(shape, pts, [1, 0, 1], mask=prev_ours)
                kw = dict(multimask_output=False)
                multi = False
            mask_ref = None if prev_ref is None else prev_ref[None]

            def run_ours():
                return predict(model, emb, prompt, multimask=multi)

            def run_ref():
                return ref.predict(prompt.points, prompt.labels, None, mask_ref, **kw)

            order = (run_ours, run_ref) if k % 2 else (run_ref, run_ours)
            out = {}
            for fn in order:
                t, c = time.perf_counter(), time.process_time()
                out[fn] = fn()
                out[(fn, "t")] = time.perf_counter() - t
                out[(fn, "c")] = time.process_time() - c
            r, (_, sc, low) = out[run_ours], out[run_ref]
            if k >= 3:  # warm-up
                ours.append((out[(run_ours, "t")], out[(run_ours, "c")]))
                theirs.append((out[(run_ref, "t")], out[(run_ref, "c")]))
                idx = np.argsort(-sc, kind="stable")
                diffs.append(float(np.abs(r.logits - low[idx]).max()))
            if scen == "refine":
                prev_ours, prev_ref = r.logits[0], low[0]
        med = [[statistics.median(x[j] for x in v) * 1e3 for j in (0, 1)] for v in (ours, theirs)]
        results[scen] = (*med[0], *med[1], max(diffs))
    print(f"\n{label}: {params / 1e6:.1f} M parameters ({dparams / 1e6:.2f} M in the mask decoder), "
          f"slice {shape[0]}x{shape[1]}, encoder {enc:.1f} s once, {n} clicks per scenario, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print("  medians; wall = click to mask; cpu = process CPU time (all threads, spin-waits included)")
    head = ("scenario", "ours wall", "official", "ratio", "ours cpu", "official", "ratio", "max|dlogit|")
    widths = (12, 9, 9, 6, 9, 9, 6, 12)
    print("  " + " ".join(f"{h:<{w}}" if i == 0 else f"{h:>{w}}" for i, (h, w) in enumerate(zip(head, widths))))
    for scen, (ow, oc, tw, tc, d) in results.items():
        print(f"  {scen:<12} {ow:9.1f} {tw:9.1f} {ow / tw:6.2f} {oc:9.1f} {tc:9.1f} {oc / tc:6.2f} {d:12.2e}")
    return label, results


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clicks", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", default="sam,sam2")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    for fam in a.models.split(","):
        bench(fam.strip(), max(20, a.clicks))


if __name__ == "__main__":
    main()
