"""``napari-sam-stack`` command line: the demo, models, embeddings and headless segmentation.

    napari-sam-stack demo [--checkpoint x.pt] [--test-model]
    napari-sam-stack models
    napari-sam-stack download sam2.1_hiera_tiny
    napari-sam-stack embed stack.tif --model sam2.1_hiera_tiny
    napari-sam-stack segment stack.tif --model sam2.1_hiera_tiny --point 12,140,96 --out labels.tif
    napari-sam-stack cache info|clear
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import DownloadError, SamStackError


def _model_args(p: argparse.ArgumentParser, default: str | None = "sam2.1_hiera_tiny") -> None:
    p.add_argument("--model", default=default, help="registry name (see `napari-sam-stack models`)")
    p.add_argument("--checkpoint", help="local checkpoint file instead of a registry name")
    p.add_argument("--config", help="SAM 2 config for --checkpoint (name or YAML path)")
    p.add_argument("--model-type", help="SAM 1 encoder type for --checkpoint (vit_b, vit_l, vit_h, auto)")
    p.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")


def _load(args):
    from .models import load_model

    if args.checkpoint:
        return load_model(checkpoint=args.checkpoint, config=args.config, model_type=args.model_type, device=args.device)
    return load_model(args.model, device=args.device)


def read_image(path: str):
    """A TIFF (memory-mapped when possible) or a zarr array, read lazily where the format allows."""
    p = Path(path)
    if p.suffix == ".zarr" or (p.is_dir() and (p / "zarr.json").exists() or (p / ".zarray").exists()):
        import zarr

        return zarr.open_array(str(p), mode="r")
    import tifffile

    try:
        return tifffile.memmap(str(p), mode="r")
    except ValueError:  # compressed or tiled: read it
        return tifffile.imread(str(p))


def _progress(desc: str):
    from tqdm import tqdm

    bar = tqdm(desc=desc, unit="slice")

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    return update, bar


def _point(text: str) -> tuple[int, float, float]:
    parts = text.split(",")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"{text!r}: give slice,row,col (three numbers)")
    try:
        z, r, c = float(parts[0]), float(parts[1]), float(parts[2])
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: slice,row,col must be numbers") from None
    if z != int(z):
        raise argparse.ArgumentTypeError(f"{text!r}: the slice must be a whole number")
    return int(z), r, c


def _axis(text: str) -> int | None:
    if text.lower() in ("none", "2d"):
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: the slice axis is a number, or 'none' for one 2D image") from None


def cmd_models(args) -> int:
    from .models import model_spec, weights_dir, available_models

    for name in available_models():
        spec = model_spec(name)
        here = (weights_dir() / spec.filename).is_file()
        print(f"{name:24s} {spec.family:5s} {'cached' if here else '-':7s} {spec.url}")
    print(f"weights cache: {weights_dir()}")
    return 0


def cmd_download(args) -> int:
    from .models import download_checkpoint

    print(download_checkpoint(args.name))
    return 0


def cmd_cache(args) -> int:
    from .embeddings import cache_info, clear_cache

    if args.action == "clear":
        freed = clear_cache(args.cache_dir, older_than_days=args.older_than_days)
        print(f"freed {freed / 2**20:.1f} MB")
    print(cache_info(args.cache_dir))
    return 0


def cmd_embed(args) -> int:
    from .session import Session

    s = Session(read_image(args.image), _load(args), axis=args.axis, cache_dir=args.cache_dir)
    update, bar = _progress("embeddings")
    s.compute_embeddings(progress=update)
    bar.close()
    print(f"{len(s)} slices embedded")
    return 0


def _seed_plane(path: str, index: int, axis: int | None, frame_shape):
    """Slice ``index`` of a labels file shaped like the image (or a single 2D labels plane)."""
    import numpy as np
    import tifffile

    seeds = np.asarray(tifffile.imread(path))
    if seeds.shape == tuple(frame_shape):
        return seeds
    if axis is None or seeds.ndim != 3:
        raise ValueError(f"--seed-labels {path}: shape {seeds.shape} is neither a {frame_shape} plane nor a stack")
    if not 0 <= index < seeds.shape[axis]:
        raise ValueError(f"--seed-slice {index} is out of range: {path} has {seeds.shape[axis]} slices on axis {axis}")
    plane = np.take(seeds, index, axis=axis)
    if plane.shape != tuple(frame_shape):
        raise ValueError(f"--seed-labels {path}: slices of {plane.shape} do not match the image's {frame_shape}")
    return plane


def _json_prompts(path: str) -> list[dict]:
    items = json.loads(Path(path).read_text())
    if not isinstance(items, list) or not all(isinstance(i, dict) and "obj" in i and "index" in i for i in items):
        raise ValueError(f'--prompts {path}: expected a JSON list of {{"obj": id, "index": slice, "points": ...}}')
    return items


def cmd_segment(args) -> int:
    import numpy as np
    import tifffile

    from .session import Session

    out = Path(args.out)
    if not out.parent.is_dir():  # fail now, not after the whole propagation
        raise ValueError(f"--out {out}: the folder {out.parent} does not exist")
    s = Session(read_image(args.image), _load(args), axis=args.axis, cache_dir=args.cache_dir)
    by_slice: dict[int, list] = {}
    for z, r, c in args.point or []:  # several clicks on one slice form one prompt
        by_slice.setdefault(z, []).append([r, c])
    for z, pts in by_slice.items():
        s.add_prompt(1, z, points=pts, point_labels=[1] * len(pts))
    if args.seed_labels:
        plane = _seed_plane(args.seed_labels, args.seed_slice, args.axis, s.frames.frame_shape)
        for obj in np.unique(plane)[1:]:
            s.add_prompt(int(obj), args.seed_slice, mask=plane == obj)
    for item in _json_prompts(args.prompts) if args.prompts else []:
        s.add_prompt(item["obj"], item["index"], points=item.get("points"),
                     point_labels=item.get("labels"), box=item.get("box"))
    update, bar = _progress("propagate")
    labels = s.propagate(progress=update)
    bar.close()
    tifffile.imwrite(out, labels)
    print(f"wrote {out}: {len(np.unique(labels)) - 1} object(s) on {int((labels.reshape(len(labels), -1) > 0).any(1).sum())} slice(s)")
    return 0


def cmd_demo(args) -> int:
    from ._widget._demo import run_demo

    return run_demo(args)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="napari-sam-stack", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("demo", help="napari with the sample stack and the widget docked")
    _model_args(p)
    p.add_argument("--test-model", action="store_true", help="use a random-weight tiny model (no download)")
    p.add_argument("--screenshot", help="save a screenshot of the window to this PNG and quit")
    p.set_defaults(func=cmd_demo)

    sub.add_parser("models", help="list the registry").set_defaults(func=cmd_models)
    p = sub.add_parser("download", help="download and verify a checkpoint")
    p.add_argument("name")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("cache", help="show or clear the embeddings cache")
    p.add_argument("action", choices=["info", "clear"])
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--older-than-days", type=float, default=None, help="clear: only stacks untouched this long")
    p.set_defaults(func=cmd_cache)

    for name, func, helptext in (("embed", cmd_embed, "precompute embeddings into the cache"),
                                 ("segment", cmd_segment, "prompt and propagate headless, write labels")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("image", help="TIFF file or zarr array")
        p.add_argument("--axis", type=_axis, default=0, help="slice axis (default 0; 'none' for one 2D image)")
        p.add_argument("--cache-dir", default=None)
        _model_args(p)
        if name == "segment":
            p.add_argument("--point", action="append", type=_point, help="slice,row,col of a positive click on object 1")
            p.add_argument("--seed-labels", help="labels TIFF: every object on --seed-slice becomes a mask prompt")
            p.add_argument("--seed-slice", type=int, default=0, help="the slice of --seed-labels to start from")
            p.add_argument("--prompts", help='JSON list of {"obj", "index", "points", "labels", "box"}')
            p.add_argument("--out", required=True, help="output labels TIFF")
        p.set_defaults(func=func)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (SamStackError, ValueError, OSError) as e:  # bad input: a message, not a traceback
        print(f"error: {e}", file=sys.stderr)
        if isinstance(e, DownloadError):
            print("       here: pass --checkpoint /path/to/file (with --config for SAM 2, --model-type for SAM 1)",
                  file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
