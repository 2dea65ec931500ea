"""Segmentation quality of the shipped micro model on the HELD-OUT nuclei, against the random-weight floor.

Held out (never trained on, see scripts/train_nuclei.py): img2d columns >= 256 (evaluated as two
256 x 256 tiles, rows 0-255 and 256-511, the model's native input size) and img3d slices 15-30.
Everything goes through the public API (Session.predict, Session.iter_propagate):

- click: one positive click at each nucleus centroid (the mask pixel nearest it) -> best of the
  candidates by predicted IoU -> Dice with the ground truth; median over nuclei
- box: the ground-truth bounding box -> Dice
- clicks to 0.9: the centroid click, then clicks at the centre of the largest error region
  (positive on a miss, negative on a false positive; the previous low-res logits as mask prompt)
  until Dice >= 0.9, at most 10 more clicks
- 3D: one click on the middle held-out slice of each 3D nucleus, SAM 2 propagation through the
  held-out slices (all nuclei in one batched run) -> 3D Dice per nucleus
- automatic: napari_sam_stack.automatic.generate on each 2D tile -> instance F1 at IoU 0.5

    python benchmarks/eval_quality.py                     # writes docs/benchmarks.md section + docs/images/quality_*.png
    python benchmarks/eval_quality.py --subset 3 --points-per-side 4 --no-write   # smoke test
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "src" / "napari_sam_stack" / "data"
SPLIT_COL, SPLIT_Z, MAX_EXTRA_CLICKS, TARGET = 256, 15, 10, 0.9
MARK_START, MARK_END = "<!-- finetune-quality:start -->", "<!-- finetune-quality:end -->"


def held_out():
    import tifffile

    img2d, mask2d = (tifffile.imread(DATA / f) for f in ("img2d.tif", "mask2d.tif"))
    img3d, mask3d = (tifffile.imread(DATA / f) for f in ("img3d.tif", "mask3d.tif"))
    tiles = [(img2d[r:r + 256, SPLIT_COL:SPLIT_COL + 256], mask2d[r:r + 256, SPLIT_COL:SPLIT_COL + 256]) for r in (0, 256)]
    return tiles, (img3d[SPLIT_Z:], mask3d[SPLIT_Z:])


def random_floor(folder: Path, config: Path, seed: int = 0):
    """The same architecture with random weights (the floor), through load_model."""
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from napari_sam_stack import load_model

    cfg = OmegaConf.load(config)
    torch.manual_seed(seed)
    module = instantiate(cfg.model, _recursive_=True)
    torch.save({"model": module.state_dict()}, folder / "floor.pt")
    return load_model(checkpoint=folder / "floor.pt", config=config, device="cpu")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2 * np.logical_and(a, b).sum() / s)


def inner_point(mask: np.ndarray) -> tuple[float, float]:
    """The mask pixel nearest its centroid, (row, col)."""
    pts = np.argwhere(mask)
    c = pts.mean(0)
    return tuple(float(v) for v in pts[np.argmin(((pts - c) ** 2).sum(1))])


def error_click(pred: np.ndarray, gt: np.ndarray):
    """Centre of the largest error region (the pixel farthest from its border) and its label."""
    from scipy import ndimage

    fn, fp = gt & ~pred, pred & ~gt
    best = None
    for region, label in ((fn, 1), (fp, 0)):
        if region.any():
            dist = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
            if best is None or dist.max() > best[0]:
                best = (dist.max(), np.unravel_index(np.argmax(dist), dist.shape), label)
    return [float(v) for v in best[1]], best[2]


def eval_2d(model, tiles, subset: int | None):
    from napari_sam_stack import Session

    click, box, clicks = [], [], []
    curves = []
    for image, labels in tiles:
        s = Session(image, model, axis=None, in_memory=True)
        ids = [i for i in np.unique(labels) if i and (labels == i).sum() >= 20][:subset]
        for i in ids:
            gt = labels == i
            p = inner_point(gt)
            r = s.predict(0, points=[p], point_labels=[1])
            best = r.best
            click.append(dice(r.masks[best], gt))
            rows, cols = np.nonzero(gt)
            b = s.predict(0, box=[rows.min(), cols.min(), rows.max(), cols.max()])
            box.append(dice(b.masks[0], gt))
            points, plabels = [p], [1]
            curve, mask, logits = [click[-1]], r.masks[best], r.logits[best]
            while curve[-1] < TARGET and len(points) <= MAX_EXTRA_CLICKS:
                q, lab = error_click(mask, gt)
                points.append(q)
                plabels.append(lab)
                r = s.predict(0, points=points, point_labels=plabels, mask=logits, multimask=False)
                mask, logits = r.masks[0], r.logits[0]
                curve.append(dice(mask, gt))
            clicks.append(len(points) if curve[-1] >= TARGET else MAX_EXTRA_CLICKS + 2)
            curves.append(curve + [curve[-1]] * (MAX_EXTRA_CLICKS + 1 - len(curve)))
    return {"click": np.array(click), "box": np.array(box), "clicks": np.array(clicks), "curves": np.array(curves)}


def eval_3d(model, stack, labels, subset: int | None):
    from napari_sam_stack import Session

    s = Session(stack, model, axis=0, in_memory=True)
    ids = [i for i in np.unique(labels) if i][:subset]
    for i in ids:
        zs = np.nonzero((labels == i).any(axis=(1, 2)))[0]
        z = int(zs[len(zs) // 2])
        s.add_prompt(int(i), z, points=[inner_point(labels[z] == i)], point_labels=[1])
    def own_masks(max_absent):
        pred = {int(i): np.zeros(labels.shape, bool) for i in ids}
        for index, logits in s.iter_propagate(max_absent=max_absent):
            for o, lg in logits.items():
                pred[o][index] = lg > 0
        return np.array([dice(pred[int(i)], labels == i) for i in ids])

    # each object's own masks (what the objects panel shows), without and with tracks ending where SAM 2
    # says the nucleus is absent (the widget's and CLI's default on z); then what the Labels layer gets:
    # one id per pixel (nearest prompt, then highest logit), without and with that stop
    raw, raw_stop = own_masks(None), own_masks(1)
    lab, stop = s.propagate(), s.propagate(max_absent=1)
    return raw, raw_stop, np.array([dice(lab == i, labels == i) for i in ids]), \
        np.array([dice(stop == i, labels == i) for i in ids])


def eval_automatic(model, tiles, points_per_side: int | None = None) -> dict:
    """Instance F1 at IoU 0.5 over both tiles (matches pooled), with the official generators' defaults and with
    the model's own defaults (``automatic.defaults``: what the widget and ``napari-sam-stack auto`` start from)."""
    from napari_sam_stack import Session, automatic

    out = {}
    grid = {} if points_per_side is None else {"points_per_side": points_per_side}
    for name, params in (("official", grid), ("model", {**automatic.defaults(model), **grid})):
        matched = n_gt = n_pred = 0
        for image, labels in tiles:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", automatic.NothingFoundWarning)
                found, _ = automatic.generate(Session(image, model, axis=None, in_memory=True), 0, **params)
            gt_ids, pr_ids = [i for i in np.unique(labels) if i], [i for i in np.unique(found) if i]
            n_gt, n_pred = n_gt + len(gt_ids), n_pred + len(pr_ids)
            for g in gt_ids:
                gm = labels == g
                hits = np.unique(found[gm])
                if any(np.logical_and(gm, found == q).sum() / np.logical_or(gm, found == q).sum() >= 0.5
                       for q in hits[hits > 0]):
                    matched += 1
        prec, rec = matched / max(1, n_pred), matched / max(1, n_gt)
        out[name] = 0.0 if prec + rec == 0 else 2 * prec * rec / (prec + rec)
    return out


def evaluate(model, subset=None, automatic=True, points_per_side=None):
    tiles, (stack, labels) = held_out()
    t = time.perf_counter()
    out = eval_2d(model, tiles, subset)
    out["3d"], out["3d_own_stop"], out["3d_labels"], out["3d_stop"] = eval_3d(model, stack, labels, subset)
    out["auto_f1"] = eval_automatic(model, tiles, points_per_side) if automatic else None
    out["seconds"] = time.perf_counter() - t
    return out


def summary(r) -> dict:
    reached = r["clicks"] <= MAX_EXTRA_CLICKS + 1
    return {
        "click": float(np.median(r["click"])), "box": float(np.median(r["box"])), "3d": float(np.median(r["3d"])),
        "3d_own_stop": float(np.median(r["3d_own_stop"])),
        "3d_labels": float(np.median(r["3d_labels"])), "3d_stop": float(np.median(r["3d_stop"])),
        "clicks_median": float(np.median(r["clicks"])) if reached.all() else None,
        "clicks_reached": float(reached.mean()), "clicks_median_reached": float(np.median(r["clicks"][reached]))
        if reached.any() else None, "auto_f1": r["auto_f1"], "n2d": len(r["click"]), "n3d": len(r["3d"]),
    }


def plot(results: dict, folder: Path) -> list[Path]:
    try:
        import matplotlib
    except ImportError:  # the figures go to docs/benchmarks.md either way; say what is missing
        print("no plots: matplotlib is not installed (pip install -e '.[bench]'; tox's environment has it)")
        return []

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, key, title in zip(axes, ("click", "box", "3d"), ("one click (2D)", "box (2D)", "one click + propagation (3D)")):
        ax.boxplot([results[n][key] for n in results], tick_labels=list(results))
        ax.set_title(title)
        ax.set_ylabel("Dice")
        ax.set_ylim(0, 1)
    fig.tight_layout()
    p1 = folder / "quality_dice.png"
    fig.savefig(p1, dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for name, r in results.items():
        ax.plot(range(1, MAX_EXTRA_CLICKS + 2), np.median(r["curves"], 0), marker="o", label=name)
    ax.axhline(TARGET, color="grey", ls="--", lw=1)
    ax.set_xlabel("clicks")
    ax.set_ylabel("median Dice (2D)")
    ax.set_ylim(0, 1)
    ax.legend()
    fig.tight_layout()
    p2 = folder / "quality_clicks.png"
    fig.savefig(p2, dpi=110)
    plt.close(fig)
    return [p1, p2]


def markdown(sums: dict, seconds: dict) -> str:
    def f(v, fmt="{:.3f}"):
        return "n/a" if v is None else fmt.format(v)

    rows = [
        ("median Dice, one click at the centroid (2D) — goal ≥ 0.75", "click"),
        ("median Dice, ground-truth box (2D) — goal ≥ 0.85", "box"),
        ("median 3D Dice, one click on the middle slice + propagation — goal ≥ 0.6: each object's own SAM 2 "
         "masks (overlapping)", "3d"),
        ("… each object's own masks with `max_absent=1` (the widget's and CLI's default on z: what the objects "
         "panel shows)", "3d_own_stop"),
        ("… the labels (`Session.propagate`: one id per pixel, nearest prompt then highest logit)", "3d_labels"),
        ("… the labels with `max_absent=1` (a track ends where SAM 2 calls the nucleus absent)", "3d_stop"),
    ]
    names = list(sums)
    lines = [MARK_START, "## Quality of the shipped micro model on held-out nuclei (`benchmarks/eval_quality.py`)", "",
             "`python benchmarks/eval_quality.py`. Model `nss_nuclei_micro` (trained from random init by "
             "`scripts/train_nuclei.py`, see docs/finetune.md) against the same architecture with random weights "
             "(the floor). Held-out data only: img2d columns ≥ 256 as two 256 × 256 tiles "
             f"({sums[names[0]]['n2d']} nuclei), img3d slices 15–30 ({sums[names[0]]['n3d']} nuclei). "
             "All through `Session.predict` / `Session.iter_propagate`.", "",
             "| measure | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for label, key in rows:
        lines.append(f"| {label} | " + " | ".join(f(sums[n][key]) for n in names) + " |")
    lines.append("| clicks to reach Dice 0.9 (2D): median over nuclei that reach it within 11 | "
                 + " | ".join(f(sums[n]["clicks_median_reached"], "{:.0f}") for n in names) + " |")
    lines.append("| … share of nuclei reaching Dice 0.9 within 11 clicks | "
                 + " | ".join(f(sums[n]["clicks_reached"], "{:.0%}") for n in names) + " |")
    for key, label in (("official", "the official generators' defaults"),
                       ("model", "the model's defaults (`automatic.defaults`: `MICROSCOPY`, for nss_nuclei_micro "
                                 "with its registry entry's thresholds), what the widget / CLI start from")):
        lines.append(f"| automatic instances (2D), F1 at IoU 0.5, {label} | "
                     + " | ".join("not measured" if sums[n]["auto_f1"] is None else f(sums[n]["auto_f1"][key])
                                  for n in names) + " |")
    lines.append("| evaluation time (CPU) | " + " | ".join(f"{seconds[n]:.0f} s" for n in names) + " |")
    lines += ["", "![Dice per nucleus](images/quality_dice.png)", "", "![Dice vs clicks](images/quality_clicks.png)", "",
              MARK_END]
    return "\n".join(lines) + "\n"


def write_section(text: str, path: Path) -> None:
    """Replace our marked section of docs/benchmarks.md (re-read now: others edit it), or append it."""
    import os

    old = path.read_text() if path.exists() else "# Benchmarks\n"
    if MARK_START in old and MARK_END in old:
        head, rest = old.split(MARK_START, 1)
        new = head + text.rstrip("\n") + rest.split(MARK_END, 1)[1]
    else:
        new = old.rstrip("\n") + "\n\n" + text
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(new)
    os.replace(tmp, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--subset", type=int, default=None, help="at most this many nuclei per tile / in 3D (smoke test)")
    p.add_argument("--no-write", action="store_true", help="print only; write no docs or plots")
    p.add_argument("--no-automatic", action="store_true")
    p.add_argument("--points-per-side", type=int, default=None, help="automatic grid (default 32; smaller: smoke test)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--checkpoint", help="evaluate this SAM 2 checkpoint (config: the .yaml beside it) instead")
    args = p.parse_args(argv)
    import torch

    from napari_sam_stack import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.checkpoint:
        config = Path(args.checkpoint).with_suffix(".yaml")
        trained = load_model(checkpoint=args.checkpoint, config=config, device="cpu")
    else:
        config, trained = DATA / "nss_nuclei_micro.yaml", load_model("nss_nuclei_micro", device="cpu")
    models = {"nss_nuclei_micro" if not args.checkpoint else Path(args.checkpoint).stem: trained,
              "random weights": random_floor(Path(tempfile.mkdtemp(prefix="nss-eval-")), config)}
    results = {n: evaluate(m, args.subset, not args.no_automatic, args.points_per_side) for n, m in models.items()}
    sums = {n: summary(r) for n, r in results.items()}
    for n, s in sums.items():
        print(n, {k: (round(v, 3) if isinstance(v, float) else v) for k, v in s.items()})
    if not args.no_write:
        plot(results, ROOT / "docs" / "images")
        write_section(markdown(sums, {n: r["seconds"] for n, r in results.items()}), ROOT / "docs" / "benchmarks.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
