"""``models``, ``download``, ``demo``."""

from __future__ import annotations

from . import _common as c


def add(sub) -> None:
    p = sub.add_parser("demo", help="napari with the sample stack and the widget docked")
    c.model_args(p)
    p.add_argument("--test-model", action="store_true", help="use a random-weight tiny model (no download)")
    p.add_argument("--screenshot", help="save a screenshot of the window to this PNG and quit")
    p.set_defaults(func=run_demo)
    sub.add_parser("models", help="list the registry").set_defaults(func=run_models)
    p = sub.add_parser("download", help="download and verify a checkpoint")
    p.add_argument("name")
    p.set_defaults(func=run_download)


def run_models(args) -> int:
    from ..models import available_models, model_spec, weights_dir

    print(f"{'name':24s} {'kind':5s} {'weights':9s} source")
    for name in available_models():
        spec = model_spec(name)
        here = "shipped" if spec.bundled else "cached" if (weights_dir() / spec.filename).is_file() else "-"
        print(f"{name:24s} {'SAM 2' if spec.family == 'sam2' else 'SAM 1':5s} {here:9s} "
              f"{'in the package (no download)' if spec.bundled else spec.url}")
    print(f"weights cache: {weights_dir()}")
    return 0


def run_download(args) -> int:
    from ..errors import SamStackError
    from ..models import available_models, download_checkpoint

    if args.name not in available_models():
        raise SamStackError(c.unknown_model(args.name))
    print(download_checkpoint(args.name))
    return 0


def run_demo(args) -> int:
    from .._widget._demo import run_demo

    return run_demo(args)
