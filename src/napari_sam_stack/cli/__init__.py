"""``napari-sam-stack``: the command line (also ``python -m napari_sam_stack.cli``).

    napari-sam-stack demo [--test-model]                       napari with the sample and the widget
    napari-sam-stack models | download NAME                    the model registry
    napari-sam-stack embed STACKS... [--workers N]             precompute embeddings (Dask optional)
    napari-sam-stack segment STACK --prompts FILE --out L.tif  prompts -> propagation -> labels
    napari-sam-stack auto STACKS... --out L.tif|FOLDER         segment everything
    napari-sam-stack cache info | clear [ENTRY]                the embeddings cache
    napari-sam-stack train IMAGES --labels LABELS --out M.pt   finetune (napari_sam_stack.finetune)

Every subcommand has ``--help`` with examples; docs/cli.md describes them all. One module
per subcommand group; arguments are checked before any model loads, and every error is
one line on stderr (exit status 2; 1 when some stacks of several failed).
"""

from __future__ import annotations

import argparse
import re
import sys
import warnings

from ..errors import DownloadError, SamStackError, UnknownModelError
from ._common import Parser, check_model_flags, join_negative_values, message, unknown_model

__all__ = ["main", "build_parser", "read_image"]


def read_image(path):
    """The pixel array of a TIFF / OME-TIFF / zarr file, read lazily (see :func:`napari_sam_stack.io.read_image`)."""
    from ..io import read_image as _read

    return _read(path).data


def build_parser(argv=()) -> argparse.ArgumentParser:
    """The parser; ``train``'s own options are built only when ``argv`` asks for it (finetuning imports torch)."""
    from . import _auto, _cache, _embed, _models, _segment

    parser = Parser(prog="napari-sam-stack", description="Segment Anything (SAM, SAM 2) on microscopy stacks, headless.",
                                     epilog="run `napari-sam-stack COMMAND --help` for a command's options and examples",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    _models.add(sub)
    _embed.add(sub)
    _segment.add(sub)
    _auto.add(sub)
    _cache.add(sub)
    if "train" in argv:
        from ..finetune.cli import add_cli

        add_cli(sub)
    else:
        sub.add_parser("train", help="finetune a SAM / SAM 2 model on images and instance labels", add_help=False)
    return parser


def _quiet_warnings() -> None:
    """Library warnings that say nothing to a CLI user are hidden; ours are one line each."""
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated", category=FutureWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(torch|timm|sam2|segment_anything)(\.|$)")
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(torch|sam2)(\.|$)")

    def show(msg, category, filename, lineno, file=None, line=None):
        print(f"warning: {msg}", file=sys.stderr if file is None else file)

    warnings.showwarning = show


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    try:
        args = parser.parse_args(join_negative_values(argv))
    except SystemExit as e:  # --help (0) or a bad argument (2, its one line already printed)
        return int(e.code or 0)
    old_show = warnings.showwarning
    with warnings.catch_warnings():
        _quiet_warnings()
        try:
            if hasattr(args, "model_default"):  # the subcommands with model flags
                check_model_flags(args)
            return args.func(args)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        except UnknownModelError as e:  # models.py words it for Python; the CLI has flags
            name = re.search(r"model '([^']*)'", str(e))
            print(f"error: {unknown_model(name.group(1) if name else '?')}", file=sys.stderr)
            return 2
        except (SamStackError, ValueError, OSError) as e:  # bad input: one line, not a traceback
            print(f"error: {message(e)}", file=sys.stderr)
            if isinstance(e, DownloadError):
                print("       here: pass --checkpoint /path/to/file (with --config for SAM 2, --model-type for SAM 1)",
                      file=sys.stderr)
            return 2
        finally:
            warnings.showwarning = old_show
