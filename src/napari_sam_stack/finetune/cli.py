"""``napari-sam-stack train IMAGES LABELS --out model.pt``: the finetuning command line.

:func:`add_cli` registers the ``train`` subcommand on an ``argparse`` subparsers object;
the parsed namespace's ``func`` runs it and returns the exit status.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_cli(subparsers) -> argparse.ArgumentParser:
    from .adapters import TRAINABLE
    from .trainer import DEFAULTS

    p = subparsers.add_parser(
        "train", help="finetune a SAM / SAM 2 model on images and instance labels",
        description="Train on pairs of images and instance labels (TIFF or zarr; the i-th image goes with "
                    "the i-th labels). Writes the official checkpoint (--out; SAM 2 also <out>.yaml) and a "
                    "resumable state (<out>.state).",
    )
    p.add_argument("images", nargs="+", help="image files, then (after --labels) their label files")
    p.add_argument("--labels", nargs="+", required=True, help="label files, one per image")
    p.add_argument("--out", required=True, help="checkpoint to write (an existing file needs --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--resume", help="continue from a .state file of an earlier run")
    p.add_argument("--axis", default="auto", help="slice axis of the images, 'none' for 2D (default: 0 for 3D labels)")
    p.add_argument("--model", default="sam2.1_hiera_tiny", help="registry name to start from")
    p.add_argument("--checkpoint", help="local checkpoint to start from instead")
    p.add_argument("--config", help="SAM 2 config of --checkpoint")
    p.add_argument("--model-type", help="SAM 1 encoder type of --checkpoint (vit_b, ..., auto)")
    p.add_argument("--device", default=None)
    p.add_argument("--steps", type=int, default=DEFAULTS["steps"])
    p.add_argument("--lr", type=float, default=DEFAULTS["lr"])
    p.add_argument("--trainable", choices=TRAINABLE, default=DEFAULTS["trainable"])
    p.add_argument("--lora-rank", type=int, default=DEFAULTS["lora_rank"])
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    p.add_argument("--save-every", type=int, default=100, help="write checkpoint and state every N steps")
    p.set_defaults(func=run_train)
    return p


def _read(path):
    """The pixels of an image or labels file. Its axes are not used here (the slice axis is --axis;
    labels have the image's shape), so a file that does not name them gets no advice about them."""
    import warnings

    from ..cli import read_image
    from ..io import AxesWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AxesWarning)
        return read_image(path)


def _looks_like_labels(labels, path) -> None:
    """Warn when a labels file has more ids than instance labels could (an image given as labels)."""
    import warnings

    import numpy as np

    n = len(np.unique(labels)) - 1
    if n > 50 and n > labels.size / 50:  # objects of < 50 pixels on average: most likely intensities
        warnings.warn(f"{Path(path).name} holds {n} different values: is it an image rather than instance labels? "
                      "(the images come first, the labels after --labels)", UserWarning, stacklevel=2)


def run_train(args) -> int:
    import sys

    import numpy as np

    from ..errors import SamStackError
    from ..models import load_model
    from .trainer import train

    out = Path(args.out)
    bad = [f"--{k.replace('_', '-')} {v} must be {want}" for k, v, ok, want in (
        ("steps", args.steps, args.steps >= 1, "1 or more"), ("lr", args.lr, args.lr > 0, "more than 0"),
        ("save_every", args.save_every, args.save_every >= 0, "0 or more")) if not ok]
    if bad:
        print(f"error: {bad[0]}", file=sys.stderr)
        return 2
    if len(args.images) != len(args.labels):
        print(f"error: {len(args.images)} image(s) but {len(args.labels)} label file(s)", file=sys.stderr)
        return 2
    if out.exists() and not args.overwrite and not args.resume:
        print(f"error: {out} exists; pass --overwrite to replace it", file=sys.stderr)
        return 2
    bar = None
    try:
        pairs = []
        for img, lab in zip(args.images, args.labels):
            labels = np.asarray(_read(lab))
            _looks_like_labels(labels, lab)
            axis = None if str(args.axis).lower() in ("none", "2d") else (
                (0 if labels.ndim == 3 else None) if args.axis == "auto" else int(args.axis))
            pairs.append((_read(img), labels, axis))
        if args.checkpoint:
            model = load_model(checkpoint=args.checkpoint, config=args.config, model_type=args.model_type,
                               device=args.device)
        else:
            model = load_model(args.model, device=args.device)
        from tqdm import tqdm

        bar = tqdm(total=args.steps, desc="train", unit="step")

        def progress(step, total, loss):
            bar.total = total
            bar.n = step
            bar.set_postfix(loss=f"{loss:.4f}")

        options = {"steps": args.steps}
        if not args.resume:
            options.update(lr=args.lr, trainable=args.trainable, lora_rank=args.lora_rank, seed=args.seed)
        trainer = train(model, pairs, out=out, state=out.with_name(out.name + ".state"), resume=args.resume,
                        progress=progress, save_every=args.save_every, **options)
    except (SamStackError, ValueError) as e:
        if bar is not None:
            bar.close()  # the message on a line of its own, not after the bar
        print(f"error: {e}", file=sys.stderr)
        return 2
    bar.close()
    loss = trainer.losses[-1] if trainer.losses else float("nan")
    print(f"wrote {out} after {trainer.step_count} steps (last loss {loss:.4f})")
    return 0
