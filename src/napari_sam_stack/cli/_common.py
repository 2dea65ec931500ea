"""What every subcommand shares: argument types checked before any work, the model flags,
opening an image with its axes, progress bars, inputs over folders and globs."""

from __future__ import annotations

import argparse
import glob
import math
import os
import sys
from pathlib import Path

from ..errors import SamStackError

MAX_ID = 2**32 - 1  # labels are uint32


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


# ---------------------------------------------------------------------- argument types (argparse)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``napari-sam-stack segment: error: ... (see --help)``."""

    def error(self, text: str):
        self.exit(2, f"{self.prog}: error: {text} (see {self.prog} --help)\n")


def _numbers(text: str, what: str, count: int) -> list[float]:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != count:
        raise argparse.ArgumentTypeError(f"{text!r}: give {what} ({count} numbers separated by commas)")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: {what} must be numbers") from None
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: {what} must be finite numbers (no inf or nan)")
    return values


def _whole(v: float, text: str, what: str) -> int:
    if v != int(v):
        raise argparse.ArgumentTypeError(f"{text!r}: the {what} must be a whole number")
    return int(v)


def point(text: str) -> tuple[int, float, float]:
    """``slice,row,col`` of a click."""
    z, r, c = _numbers(text, "slice,row,col", 3)
    return _whole(z, text, "slice"), r, c


def box(text: str) -> tuple[int, float, float, float, float]:
    """``slice,row_min,col_min,row_max,col_max``: the pixels rows row_min..row_max-1 (max exclusive)."""
    z, *b = _numbers(text, "slice,row_min,col_min,row_max,col_max", 5)
    return (_whole(z, text, "slice"), *b)


def index(text: str) -> int:
    (v,) = _numbers(text, "a slice number", 1)
    return _whole(v, text, "slice")


def count(text: str) -> int:
    (v,) = _numbers(text, "a number", 1)
    n = _whole(v, text, "number")
    if n < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be 0 or more")
    return n


def positive(text: str) -> int:
    n = count(text)
    if n == 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be 1 or more")
    return n


def max_absent(text: str) -> int:
    """``--max-absent``: a number of slices, or off (0)."""
    return 0 if text.strip().lower() in ("off", "none") else count(text)


MAX_ABSENT_HELP = ("end each object's track (each direction) after this many slices where SAM 2 calls it absent, "
                   "or off (default: 1 on a z axis, where a track that goes on runs onto the nucleus above or below; "
                   "off on a time axis)")


def max_absent_for(given: int | None, img, opts) -> int | None:
    """``--max-absent`` as given (0: off), else the default for the image's slice axis."""
    from ..propagate import default_max_absent

    if given is not None:
        return given or None
    if img is None or opts["axis"] is None:
        return default_max_absent(None)
    return default_max_absent(img.axes[opts["axis"]])


def obj_id(text: str) -> int:
    n = positive(text)
    if n > MAX_ID:
        raise argparse.ArgumentTypeError(f"{text!r}: object ids go up to {MAX_ID} (labels are 32-bit)")
    return n


def axis(text: str):
    """A slice axis: a letter of the file's axes (z, t, ...), a dimension number, or none (one 2D image)."""
    t = text.strip()
    if t.lower() in ("none", "2d"):
        return None
    if t.lower() == "auto":
        return "auto"
    if t.isalpha() and len(t) == 1:
        return t.upper()
    try:
        return int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give an axis letter (z, t, ...), a dimension number, or 'none' for one 2D image") from None


def channel_axis(text: str):
    return axis(text)


def channels(text: str) -> list[int]:
    try:
        out = [int(p) for p in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a channel number, or up to three as r,g,b (e.g. 0,2,1)") from None
    if not 1 <= len(out) <= 3 or min(out) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give 1 to 3 channel numbers, each 0 or more")
    return out


def fixed(text: str) -> tuple:
    """``AXIS=INDEX``, e.g. ``t=3`` or ``0=3``."""
    name, eq, value = text.partition("=")
    if not eq or not name.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: give AXIS=INDEX, e.g. t=3 (axis letter or number)")
    try:
        i = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: the index after '=' must be a whole number") from None
    if i < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the index must be 0 or more")
    a = axis(name)
    if a is None:
        raise argparse.ArgumentTypeError(f"{text!r}: name an axis before '='")
    return a, i


def cache_dir(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path names no folder (it would mean the working directory)")
    p = Path(text).expanduser()
    if p.exists() and not p.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: is a file, not a folder")
    return str(p)


NEGATIVE_OK = ("--point", "--box", "--start", "--stop", "--seed-slice", "--fixed", "--obj", "--max-absent", "--index")


def join_negative_values(argv: list[str]) -> list[str]:
    """``--point -1,2,3`` -> ``--point=-1,2,3``: argparse would take ``-1,2,3`` for an option."""
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        if a in NEGATIVE_OK and i + 1 < len(argv) and argv[i + 1][:1] == "-" and argv[i + 1][1:2].isdigit():
            out.append(f"{a}={argv[i + 1]}")
            i += 2
            continue
        out.append(a)
        i += 1
    return out


def subcommand(sub, name: str, help: str, description: str, examples: str) -> argparse.ArgumentParser:
    """A subparser whose --help ends with ``examples`` as written."""
    return sub.add_parser(name, help=help, description=description, epilog=examples,
                          formatter_class=argparse.RawDescriptionHelpFormatter)


# ---------------------------------------------------------------------- model


def model_args(p: argparse.ArgumentParser, default: str | None = "sam2.1_hiera_tiny") -> None:
    g = p.add_argument_group("model")
    # default None here so that an explicit --model is seen (and refused next to --checkpoint);
    # check_model_flags fills in the default
    g.add_argument("--model", default=None, help=f"registry name (see `napari-sam-stack models`; default {default})")
    p.set_defaults(model_default=default)
    g.add_argument("--checkpoint", help="a local checkpoint file instead of a registry name")
    g.add_argument("--config", help="SAM 2 config of --checkpoint (its name, or a YAML file)")
    g.add_argument("--model-type", help="SAM 1 encoder type of --checkpoint (vit_b, vit_l, vit_h, auto)")
    g.add_argument("--device", default=None, help="cpu, cuda, mps (default: the best available)")


def unknown_model(name) -> str:
    """The command line's words for a name that is not in the registry."""
    from ..models import available_models

    return (f"unknown model {name!r}: the registry has {', '.join(available_models())} (see `napari-sam-stack models`); "
            "for a local file give --checkpoint FILE with --config CONFIG (SAM 2) or --model-type TYPE (SAM 1)")


def check_model_flags(args) -> None:
    """Refuse contradictory model flags and unknown names before any file is read or model loaded;
    then fill in the default ``--model``."""
    from ..models import available_models

    if args.checkpoint:
        if args.model is not None:
            raise SamStackError(f"--model {args.model} and --checkpoint {args.checkpoint} name two models: give one")
        if args.config and args.model_type:
            raise SamStackError("--config (SAM 2) and --model-type (SAM 1) contradict each other: give the one "
                                "that matches --checkpoint")
        return
    for flag, value in (("--config", args.config), ("--model-type", args.model_type)):
        if value:
            raise SamStackError(f"{flag} {value} describes a --checkpoint file, and none is given "
                                f"(a registry --model brings its own)")
    args.model_given = args.model is not None  # (segment --project: else the project's own model)
    args.model = args.model if args.model is not None else args.model_default
    if args.model is not None and args.model not in available_models():
        raise SamStackError(unknown_model(args.model))


def model_recipe(args) -> dict:
    """The model flags as :func:`~napari_sam_stack.load_model` keywords (also sent to Dask workers)."""
    if args.checkpoint:
        return {"checkpoint": str(Path(args.checkpoint).expanduser().resolve()), "config": args.config,
                "model_type": args.model_type, "device": args.device}
    return {"model": args.model, "device": args.device}


def load(args):
    from ..models import load_model

    recipe = model_recipe(args)
    if "checkpoint" in recipe and not Path(recipe["checkpoint"]).is_file():
        raise SamStackError(f"--checkpoint {args.checkpoint}: no such file")
    return load_model(**recipe)


# ---------------------------------------------------------------------- images


def image_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("image axes (read from the file; these override)")
    g.add_argument("--axes", help="the file's axes as letters, e.g. ZYX, TZYX, ZCYX, YXC (replaces the file's metadata)")
    g.add_argument("--axis", type=axis, default="auto",
                   help="slice axis: a letter (z, t), a number, or none for one 2D image (default: Z, else T, else the one other axis)")
    g.add_argument("--channel-axis", type=channel_axis, default="auto", help="channel axis: letter, number or none (default: C)")
    g.add_argument("--channel", type=channels, help="channel to use, or three as r,g,b (default: grey; 3 channels as RGB)")
    g.add_argument("--fixed", type=fixed, action="append", metavar="AXIS=INDEX",
                   help="hold a further axis at one index, e.g. --fixed t=3 (repeatable)")


def open_view(path, args):
    """``(image, session keywords, frames)`` for one input, checked before any model loads."""
    from ..io import read_image, view_options
    from ..normalise import Frames

    img = read_image(path, axes=args.axes)
    opts = view_options(img, axis=args.axis, channel_axis=args.channel_axis, fixed=dict(args.fixed or []),
                        channel=args.channel[0] if args.channel and len(args.channel) == 1 else args.channel)
    frames = Frames(img.data, **opts)
    return img, opts, frames


def labels_axes(img, opts) -> str:
    """The axes of the labels written for ``img``: the slice axis' letter then YX."""
    if opts["axis"] is None:
        return "YX"
    letter = img.axes[opts["axis"]]
    return (letter if letter in "TZ" else "Z") + "YX"


# ---------------------------------------------------------------------- inputs


def expand_inputs(items: list[str]) -> list[Path]:
    """Files, zarr folders, folders of images and glob patterns -> image paths (sorted, unique)."""
    from ..io import is_image_path

    out: list[Path] = []
    for item in items:
        p = Path(item).expanduser()
        if any(ch in item for ch in "*?["):
            matches = sorted(Path(m) for m in glob.glob(os.path.expanduser(item)))
            if not matches:
                raise SamStackError(f"{item}: no file matches")
            out += [m for m in matches if is_image_path(m)]
        elif p.is_dir() and not is_image_path(p):
            found = sorted(c for c in p.iterdir() if is_image_path(c) and not c.name.startswith("."))
            if not found:
                raise SamStackError(f"{item}: the folder holds no .tif/.tiff/.zarr image")
            out += found
        else:
            out.append(p)
    return list(dict.fromkeys(out))


def output_for(inp: Path, out: str | None, many: bool, suffix: str = "_labels.tif") -> Path | None:
    """The labels path of ``inp``: ``out`` itself for one input; inside the folder ``out`` for several."""
    if out is None:
        return None
    o = Path(out).expanduser()
    if many or o.is_dir() and o.suffix.lower() != ".zarr":
        name = inp.name
        for ext in (".ome.tiff", ".ome.tif", ".ome.zarr", ".tiff", ".tif", ".zarr"):
            if name.lower().endswith(ext):
                name = name[: -len(ext)]
                break
        return o / (name + suffix)
    return o


# ---------------------------------------------------------------------- progress


class Progress:
    """A tqdm bar fed by ``progress(done, total)`` callbacks; shows nothing for nothing to do."""

    def __init__(self, desc: str, unit: str = "slice"):
        self.desc, self.unit, self.bar, self.total = desc, unit, None, 0

    def __call__(self, done: int, total: int) -> None:
        self.total = total
        if total <= 0:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(desc=self.desc, total=total, unit=self.unit,
                            file=sys.stderr, dynamic_ncols=True, leave=True)
        self.bar.total = total
        self.bar.n = done
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def about(path, e: BaseException) -> str:
    """``message(e)`` for one input of several, named once (our messages often name the file already)."""
    text, p = message(e), Path(path)
    if text.startswith(str(p)):
        return p.name + text[len(str(p)):]
    return text if text.startswith(p.name) else f"{p.name}: {text}"


def message(e: BaseException) -> str:
    """One line for an error: our own messages as they are; others with their kind in words."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if isinstance(e, (SamStackError, ValueError)):
        return text
    if isinstance(e, OSError):
        return f"{e.strerror or text}{f': {e.filename}' if e.filename else ''}"
    return f"{type(e).__name__}: {text}"
