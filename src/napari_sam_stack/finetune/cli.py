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


def run_train(args) -> int:
    import sys

    import numpy as np

    from ..cli import read_image
    from ..errors import SamStackError
    from ..models import load_model
    from .trainer import train

    out = Path(args.out)
    if len(args.images) != len(args.labels):
        print(f"error: {len(args.images)} image(s) but {len(args.labels)} label file(s)", file=sys.stderr)
        return 2
    if out.exists() and not args.overwrite and not args.resume:
        print(f"error: {out} exists; pass --overwrite to replace it", file=sys.stderr)
        return 2
    try:
        pairs = []
        for img, lab in zip(args.images, args.labels):
            labels = np.asarray(read_image(lab))
            axis = None if str(args.axis).lower() in ("none", "2d") else (
                (0 if labels.ndim == 3 else None) if args.axis == "auto" else int(args.axis))
            pairs.append((read_image(img), labels, axis))
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
        bar.close()
    except (SamStackError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    loss = trainer.losses[-1] if trainer.losses else float("nan")
    print(f"wrote {out} after {trainer.step_count} steps (last loss {loss:.4f})")
    return 0
