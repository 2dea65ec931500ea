"""``auto``: segment everything, over one stack or a folder of them (optionally on a Dask cluster)."""

from __future__ import annotations

import argparse
import math
import warnings
from functools import partial
from pathlib import Path

import numpy as np

from ..errors import SamStackError
from . import _common as c

EXAMPLES = """examples:
  napari-sam-stack auto stack.tif --out labels.tif
  napari-sam-stack auto stack.tif --key-slices 5,15,25 --out labels.zarr
  napari-sam-stack auto image2d.tif --out labels.tif                    (one 2D image)
  napari-sam-stack auto 'plates/*.tif' --out results/ --workers 2       (one stack per Dask task)
  napari-sam-stack auto plates/ --out results/ --points-per-side 16 --every 10

3D (SAM 2): segment-everything on key slices, each instance propagated through the stack.
With a SAM 1 model each slice is segmented on its own (ids are not linked across slices)."""

PARAMS = ("points_per_side", "pred_iou_thresh", "stability_score_thresh", "box_nms_thresh", "min_mask_region_area",
          "max_area_fraction", "multimask")


def add(sub) -> None:
    from ..automatic import MICROSCOPY

    p = c.subcommand(sub, "auto", "segment everything: every instance, in 2D or through a stack",
                     "Find every instance without prompts (SAM's automatic mask generator on cached "
                     "embeddings; 3D instances by SAM 2 propagation from key slices).", EXAMPLES)
    p.add_argument("images", nargs="+", help="TIFF / OME-TIFF files, (OME-)zarr folders, folders of them, or globs")
    p.add_argument("--out", required=True, help="labels file (.tif/.zarr) for one image; an existing folder for several")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    g = p.add_argument_group("key slices (3D, SAM 2)")
    g.add_argument("--key-slices", type=_slices, help="slices to segment everything on, e.g. 5,15,25")
    g.add_argument("--every", type=c.positive, help="every K-th slice is a key slice (default: 5 key slices spread over the stack)")
    g.add_argument("--max-absent", type=c.max_absent, help=c.MAX_ABSENT_HELP)
    g = p.add_argument_group("segment-everything parameters (default: the model's, automatic.defaults: for "
                             "fluorescence microscopy, and the shipped nuclei model's own thresholds)")
    d = MICROSCOPY
    own = "; the model's own where its registry entry has one, e.g. nss_nuclei_micro"
    g.add_argument("--points-per-side", type=c.positive, help=f"(microscopy default {d['points_per_side']}{own})")
    for name in PARAMS[1:4] + PARAMS[5:6]:
        g.add_argument("--" + name.replace("_", "-"), type=_fraction, help=f"(microscopy default {d[name]}{own})")
    g.add_argument("--min-mask-region-area", type=c.count, help=f"(microscopy default {d['min_mask_region_area']}{own})")
    g.add_argument("--multimask", action=argparse.BooleanOptionalAction,
                   help="three candidate masks per grid point (default: on; off for nss_nuclei_micro)")
    p.add_argument("--cache-dir", type=c.cache_dir, default=None, help="embeddings cache folder (default: the user cache)")
    from ._embed import dask_args

    dask_args(p)
    c.image_args(p)
    c.model_args(p)
    p.set_defaults(func=run)


def _slices(text: str) -> list[int]:
    try:
        out = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give slice numbers separated by commas, e.g. 5,15,25") from None
    if min(out) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: slices are 0 or more")
    return out


def _fraction(text: str) -> float:
    (v,) = c._numbers(text, "a number from 0 to 1", 1)
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number from 0 to 1")
    return v


def _check_keys(keys, n: int, path: Path) -> None:
    if keys is not None and max(keys) >= n:
        raise SamStackError(f"--key-slices {max(keys)} is out of range: {path.name} has {c.plural(n, 'slice')}")


def settings(args) -> dict:
    """Everything a worker needs to run one stack, as plain data."""
    keys = ("axes", "axis", "channel_axis", "channel", "fixed", "key_slices", "every", "max_absent", "cache_dir", "overwrite", "threads",
            *PARAMS)
    return {k: getattr(args, k) for k in keys}


def auto_one(path: Path, out: Path, st: dict, model, progress: bool = True) -> str:
    """Segment everything in one image and write its labels; returns a one-line summary."""
    from .. import automatic
    from ..annotation import Annotation
    from ..io import write_labels

    args = argparse.Namespace(**st)
    img, opts, frames = c.open_view(path, args)
    params = {k: (d if st[k] is None else st[k]) for k, d in automatic.defaults(model).items() if k in PARAMS}
    n = len(frames)
    keys = st["key_slices"]
    _check_keys(keys, n, path)
    a = Annotation(img.data, model, cache_dir=st["cache_dir"], **opts)
    if opts["axis"] is None or n == 1:
        labels, records = automatic.generate(a.session, 0, **params)
        labels = np.asarray(labels, np.uint32)[None]
    elif model.family != "sam2":
        labels = np.zeros(a.session.shape, np.uint32)
        for i in range(n):
            labels[i] = automatic.generate(a.session, i, **params)[0]
    else:
        every = st["every"] or (None if keys else max(1, math.ceil(n / 5)))
        bar = c.Progress(f"{path.name} key slices", "key slice") if progress else None
        try:
            automatic.add_automatic(a, keys, every=every, commit=True, progress=bar,
                                    max_absent=c.max_absent_for(st["max_absent"], img, opts),
                                    **params)
        finally:
            if bar is not None:
                bar.close()
        labels = np.asarray(a.labels, np.uint32)
    axes = c.labels_axes(img, opts)
    written = write_labels(out, labels[0] if axes == "YX" else labels, overwrite=st["overwrite"],
                           protect=[path, *st.get("protect", [])], axes=axes)
    ids = np.unique(labels)
    return f"{path.name}: {c.plural(len(ids) - (ids[0] == 0), 'instance')} -> {written}"


def _auto_task(recipe: dict, st: dict, item: tuple) -> str:
    """One stack on a Dask worker (the model is loaded once per worker process)."""
    from ..distributed import worker_model

    path, out = item
    if st.get("threads"):
        import torch

        torch.set_num_threads(int(st["threads"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return auto_one(Path(path), Path(out), st, worker_model(recipe), progress=False)


def run(args) -> int:
    from ..io import check_output
    from ._embed import close_client, open_client

    inputs = c.expand_inputs(args.images)
    many = len(inputs) > 1
    if many and not Path(args.out).is_dir():
        raise SamStackError(f"--out {args.out}: with several images, give an existing folder for their labels")
    jobs = [(p, c.output_for(p, args.out, many)) for p in inputs]
    if not many:  # one image: every check before the model loads
        check_output(jobs[0][1], overwrite=args.overwrite, protect=[jobs[0][0]])
        with warnings.catch_warnings():  # (auto_one opens it again and says its warnings then: once)
            warnings.simplefilter("ignore")
            _check_keys(args.key_slices, len(c.open_view(jobs[0][0], args)[2]), jobs[0][0])
    st = {**settings(args), "protect": [str(p) for p in inputs]}
    failed = 0
    client = open_client(args)
    try:
        if client is not None:
            from ..distributed import map_stacks

            task = partial(_auto_task, c.model_recipe(args), st)
            with c.Progress("stacks", "stack") as bar:
                results = list(map_stacks(client, task, [(str(p), str(o)) for p, o in jobs], progress=bar))
        else:
            model = c.load(args)
            results = []
            for p, o in jobs:
                try:
                    results.append(((p, o), auto_one(p, o, st, model), None))
                except (SamStackError, ValueError, OSError) as e:
                    if not many:
                        raise
                    results.append(((p, o), None, e))
    finally:
        close_client(client)
    for (p, _), line, err in results:
        if err is None:
            print(line)
        else:
            if not many:
                raise err
            failed += 1
            print(f"error: {c.about(p, err)}")
    if many:
        print(f"{c.plural(len(jobs) - failed, 'stack')} segmented, {failed} failed")
    return 1 if failed else 0
