"""Segment-everything cost: ours on the cached embedding vs the official generators, and 3D seeding.

(a) 2D, full-size SAM 1 vit_b and SAM 2.1 hiera_t (random weights, 1024 input), one 512 x 512
    slice (the stardist nuclei image), 32 x 32 grid, 64 points per batch: our
    ``automatic.generate`` with the slice's embedding cached vs the official generator's
    ``generate()`` minus its own embedding time (``set_image`` on the same image, timed
    apart in the same run). Two threshold settings, the same for both sides:
    ``official`` (the generators' defaults: with random weights no candidate passes, so this
    times the decoder and the resizing the official code does before filtering) and ``all``
    (pred_iou 0, stability 0, offset 0.02, every candidate resized and scored: our worst
    case, since the early IoU filter saves nothing). Goal: ours <= 0.5 x.
(b) 3D, SAM 2 (tiny test model by default; ``--model hiera_t --image-size 512`` for the
    real architecture): a 30-slice stack, 20 objects seeded by mask prompts on the middle
    slice (ground-truth nuclei of the stardist stack, repeated to 30 slices, with a mirrored copy
    side by side for enough nuclei; the slice with the most): ONE
    batched propagation (what ``add_automatic`` runs) vs 20 separate single-object
    propagations, embeddings cached for both. Goal: ours <= 0.5 x.

    python benchmarks/bench_automatic.py --part a --models vit_b hiera_t
    python benchmarks/bench_automatic.py --part b --model tiny
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent.parent / "src" / "napari_sam_stack" / "data"
SETTINGS = {
    "official": {},
    "all": {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "stability_score_offset": 0.02},
}


def _model(name: str, image_size: int = 1024):
    import torch

    import napari_sam_stack as nss

    torch.manual_seed(0)
    if name == "vit_b":
        from segment_anything import sam_model_registry

        return nss.load_model(sam_model_registry["vit_b"](checkpoint=None), device="cpu"), "SAM 1 vit_b (1024)"
    if name == "tiny":
        import tempfile

        from napari_sam_stack.testing import load_tiny_sam2

        return load_tiny_sam2(tempfile.mkdtemp()), "tiny test SAM 2 (256 input)"
    from sam2.build_sam import build_sam2_video_predictor

    from napari_sam_stack.testing import OBJECT_SCORE_BIAS

    module = build_sam2_video_predictor("configs/sam2.1/sam2.1_hiera_t.yaml", None, device="cpu",
                                        hydra_overrides_extra=[f"++model.image_size={image_size}"])
    head = module.sam_mask_decoder.pred_obj_score_head
    with torch.no_grad():
        (head.layers[-1] if hasattr(head, "layers") else head).bias.fill_(OBJECT_SCORE_BIAS)
    return nss.load_model(module, device="cpu"), f"SAM 2.1 hiera_t ({image_size})"


def part_a(models, points_per_side: int, settings) -> dict:
    import tifffile
    import torch

    from napari_sam_stack import Session, automatic

    image = tifffile.imread(DATA / "img2d.tif")
    out = {}
    for name in models:
        model, desc = _model(name)
        s = Session(image, model, axis=None, in_memory=True)
        s.compute_embeddings()
        rgb = s.frames[0]
        if model.family == "sam":
            from segment_anything import SamAutomaticMaskGenerator as Official
        else:
            from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator as Official
        for setting in settings:
            kw = {"points_per_side": points_per_side, "points_per_batch": 64, **SETTINGS[setting]}
            t0 = time.perf_counter()
            labels, records = automatic.generate(s, 0, **kw)
            ours = time.perf_counter() - t0
            gen = Official(model.module, **kw)
            with torch.inference_mode():
                t0 = time.perf_counter()
                gen.predictor.set_image(rgb)
                embed = time.perf_counter() - t0
                gen.predictor.reset_predictor() if model.family == "sam2" else gen.predictor.reset_image()
                t0 = time.perf_counter()
                ref = gen.generate(rgb)
                total = time.perf_counter() - t0
            net = total - embed
            row = {"model": desc, "setting": setting, "ours_s": round(ours, 2), "official_total_s": round(total, 2),
                   "official_embedding_s": round(embed, 2), "official_minus_embedding_s": round(net, 2),
                   "ratio": round(ours / net, 3), "instances_ours": len(records), "masks_official": len(ref)}
            print(json.dumps(row), flush=True)
            out[f"{name}/{setting}"] = row
    return out


def part_b(model_name: str, image_size: int, n_slices: int, n_objects: int) -> dict:
    import tifffile

    from napari_sam_stack import Session

    model, desc = _model(model_name, image_size)
    img = tifffile.imread(DATA / "img3d.tif")
    gt = tifffile.imread(DATA / "mask3d.tif")
    reps = -(-n_slices // img.shape[0])
    img = np.concatenate([img] * reps)[:n_slices]
    gt = np.concatenate([gt] * reps)[:n_slices].astype(np.int64)
    img, gt = np.concatenate([img, img[:, :, ::-1]], axis=2), np.concatenate([gt, (gt + gt.max() * (gt > 0))[:, :, ::-1]], axis=2)
    key = int(np.argmax([len(np.unique(g)) for g in gt]))  # two mirrored copies side by side: enough nuclei
    ids, counts = np.unique(gt[key][gt[key] > 0], return_counts=True)
    ids = ids[np.argsort(-counts)][:n_objects]
    if len(ids) < n_objects:
        raise SystemExit(f"slice {key} has only {len(ids)} ground-truth nuclei")
    s = Session(img, model, axis=0, in_memory=True)
    s.compute_embeddings()
    for o, gid in enumerate(ids, 1):
        s.add_prompt(o, key, mask=gt[key] == gid)
    objs = list(range(1, n_objects + 1))
    t0 = time.perf_counter()
    for _ in s.iter_propagate(obj_ids=objs):
        pass
    batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    for o in objs:
        for _ in s.iter_propagate(obj_ids=[o]):
            pass
    separate = time.perf_counter() - t0
    row = {"model": desc, "slices": n_slices, "objects": n_objects, "batched_s": round(batched, 2),
           "separate_s": round(separate, 2), "ratio": round(batched / separate, 3)}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("a", "b", "both"), default="both")
    ap.add_argument("--models", nargs="+", default=["vit_b", "hiera_t"], choices=("vit_b", "hiera_t"))
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--points-per-side", type=int, default=32)
    ap.add_argument("--model", default="tiny", choices=("tiny", "hiera_t"), help="part b")
    ap.add_argument("--image-size", type=int, default=512, help="part b, hiera_t input size")
    ap.add_argument("--slices", type=int, default=30)
    ap.add_argument("--objects", type=int, default=20)
    args = ap.parse_args()
    if args.part in ("a", "both"):
        part_a(args.models, args.points_per_side, args.settings)
    if args.part in ("b", "both"):
        part_b(args.model, args.image_size, args.slices, args.objects)


if __name__ == "__main__":
    main()
