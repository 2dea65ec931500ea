"""Embeddings benchmark: precompute overhead over the bare encoder, and reopening a cached stack.

Model: SAM 2.1 hiera_t at full size (1024 input), random weights, built by sam2's own
``build_sam2`` from ``configs/sam2.1/sam2.1_hiera_t.yaml`` and loaded with ``load_model(module)``.
Data: a synthetic uint16 nuclei stack (``testing.synthetic_nuclei``), so the precompute
includes the volume-wide normalisation.

(a) precompute wall time (Frames + store creation, then one pipelined ``compute()``: read,
    normalise, preprocess, encode, write the cache) over the encoder's time on the same slices
    (goal <= 1.05), two ways: over the encoder calls inside that same run (immune to load
    changes between measurements: the machine is shared), and over bare ``forward_image``
    passes on the already preprocessed slices, run before and after (mean).
(b) reopening the cached stack (new Frames + new store: signature, then every slice read
    back as tensors; best of 3) vs computing it (goal >= 20x faster).
Also printed: the float16 storage option's error, measured on these features.

    python benchmarks/bench_embeddings.py [--slices 6] [--size 512] [--device cpu] [--batch-size 1]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time

import numpy as np
import torch


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--slices", type=int, default=6)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=1)
    args = p.parse_args(argv)

    from sam2.build_sam import build_sam2

    from napari_sam_stack import load_model
    from napari_sam_stack.embeddings import EmbeddingStore, preprocess
    from napari_sam_stack.normalise import Frames
    from napari_sam_stack.testing import synthetic_nuclei

    torch.manual_seed(0)
    module = build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", None, device="cpu")
    model = load_model(module, device=args.device)
    n_params = sum(p.numel() for p in module.image_encoder.parameters())
    stack, _ = synthetic_nuclei((args.slices, args.size, args.size), n_nuclei=12)
    frames = Frames(stack, 0)
    inputs = [preprocess(model, [frames[i]])[0] for i in range(len(frames))]

    def sync():
        if model.device.type == "cuda":
            torch.cuda.synchronize()

    def timed(fn) -> float:
        sync()
        t = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t

    def bare_pass() -> float:
        with torch.inference_mode():
            return sum(timed(lambda: model.module.forward_image(torch.cat(inputs[i : i + args.batch_size])))  # noqa: B023
                       for i in range(0, args.slices, args.batch_size))

    bare_pass()  # warm-up (allocator, kernels)
    with tempfile.TemporaryDirectory() as cache:
        bare_before = bare_pass()
        encoder_inside = []
        holder = {}

        def precompute_run():
            store = EmbeddingStore(Frames(stack, 0), model, cache_dir=cache)
            real = store._encode

            def spy(*a):  # times each encoder call where it runs
                t = time.perf_counter()
                out = real(*a)
                sync()
                encoder_inside.append(time.perf_counter() - t)
                return out

            store._encode = spy
            store.compute(batch_size=args.batch_size)
            holder["store"] = store

        precompute = timed(precompute_run)
        store = holder["store"]
        assert store.encoded_slices == args.slices
        bare_after = bare_pass()
        bare_total, inside = (bare_before + bare_after) / 2, sum(encoder_inside)

        reopens = []
        for _ in range(3):  # best of 3 (the files are in the OS cache either way: they were just written)
            t = time.perf_counter()
            reopened = EmbeddingStore(Frames(stack, 0), model, cache_dir=cache)
            embs = [reopened.get(i) for i in range(len(reopened))]
            sync()
            reopens.append(time.perf_counter() - t)
            assert reopened.encoder_calls == 0
        reopen = min(reopens)
        disk = sum(f.stat().st_size for f in store.path.rglob("*") if f.is_file())
        per_slice = sum(f.stat().st_size for f in store.path.rglob("*") if f.is_file() and "fpn_" in str(f))

        # float16 storage: the same round trip the dtype="float16" store does
        rel, mx, scale = [], 0.0, 0.0
        for e in embs:
            for f in e.backbone_fpn:
                h = f.half().float()
                rel.append(((f - h).norm() / f.norm()).item())
                mx = max(mx, (f - h).abs().max().item())
                scale = max(scale, f.abs().max().item())
        # ... and its effect on a click's mask logits (SAM 2 image predictor path)
        from napari_sam_stack._encoder import Embedding
        from napari_sam_stack.predict import predict_logits
        from napari_sam_stack.prompts import make_prompt

        prompt = make_prompt(frames.frame_shape, points=[[args.size // 2, args.size // 3]], point_labels=[1])
        e = embs[0]
        e16 = Embedding(e.original_size, backbone_fpn=[f.half().float() for f in e.backbone_fpn],
                        vision_pos_enc=e.vision_pos_enc)
        full32, _, _ = predict_logits(model, e, prompt, False)
        full16, _, _ = predict_logits(model, e16, prompt, False)
        logit_err, logit_scale = float(np.abs(full32 - full16).max()), float(np.abs(full32).max())

    res = {
        "device": str(model.device), "slices": args.slices, "size": args.size, "batch_size": args.batch_size,
        "encoder_params_M": n_params / 1e6, "precompute_s": precompute, "encoder_inside_s": inside,
        "ratio_inside": precompute / inside, "bare_before_s": bare_before, "bare_after_s": bare_after,
        "ratio_bare": precompute / bare_total, "reopen_s": reopen, "speedup": precompute / reopen,
        "disk_MB": disk / 2**20, "f16_rel": float(np.mean(rel)), "f16_max_abs": mx, "f16_feature_max": scale,
        "f16_logit_max_abs": logit_err, "logit_max": logit_scale,
    }
    cpu = f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
    if model.device.type == "cuda":
        cpu = torch.cuda.get_device_name()
    print(f"SAM 2.1 hiera_t (random weights, image encoder {res['encoder_params_M']:.1f} M parameters, 1024 input) "
          f"on {res['device']} ({cpu}); {args.slices} uint16 slices of {args.size}x{args.size}, batch {args.batch_size}")
    print(f"(a) precompute {precompute:.2f} s; its encoder calls {inside:.2f} s -> ratio {res['ratio_inside']:.3f} "
          f"(goal <= 1.05); bare forward_image passes {bare_before:.2f} s before, {bare_after:.2f} s after "
          f"-> ratio {res['ratio_bare']:.3f}")
    print(f"(b) reopen cached stack {reopen:.3f} s vs computing it {precompute:.2f} s -> {res['speedup']:.0f}x faster "
          f"(goal >= 20x); cache {res['disk_MB']:.1f} MB: {per_slice / 2**20 / args.slices:.1f} MB per slice "
          f"+ {(disk - per_slice) / 2**20:.1f} MB positional encodings stored once")
    print(f"float16 storage: relative error {res['f16_rel']:.2e}, max abs error {mx:.2e} "
          f"(features up to {scale:.1f} in magnitude); a click's mask logits change by at most {logit_err:.1e} "
          f"(logits up to {logit_scale:.1f})")
    return res


if __name__ == "__main__":
    main()
