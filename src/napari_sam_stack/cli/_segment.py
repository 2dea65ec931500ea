"""``segment``: prompts from flags or files -> SAM 2 propagation -> a labels file / a project."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import PromptError, SamStackError
from . import _common as c
from ._prompts import Item, View, read_prompts

EXAMPLES = """examples:
  napari-sam-stack segment stack.tif --point 12,140,96 --out labels.tif
  napari-sam-stack segment stack.tif --box 12,100,80,160,120 --negative 12,130,90 --out labels.tif
  napari-sam-stack segment stack.ome.tif --prompts prompts.json --out labels.zarr
  napari-sam-stack segment stack.tif --prompts points.csv --prompts boxes.csv --out labels.tif
  napari-sam-stack segment tzyx.tif --axis z --fixed t=3 --prompts p.json --start 5 --stop 40 --out l.tif
  napari-sam-stack segment stack.tif --prompts p.json --project stack.sam     (write a project for napari)
  napari-sam-stack segment --project stack.sam --out labels.tif                (re-run a saved project)

prompt files: our JSON (a list of {"obj", "index", "points", "labels", "box"}) or napari's
Points / Shapes CSV (File > Save Selected Layers...). Boxes in JSON are pixel bounds with the
maximum exclusive: [0, 0, rows, cols] is the whole slice. Object ids: the flags are --obj;
files without ids take the next free ids from --obj on (points.csv -> 3, its rectangles -> 4, 5
in the example above); the ids used are printed. See docs/cli.md."""


def add(sub) -> None:
    p = c.subcommand(sub, "segment", "prompt and propagate headless, write labels (and/or a project)",
                     "Segment objects from prompts on a few slices, propagated through the stack "
                     "with SAM 2; writes uint32 labels (0 = background).", EXAMPLES)
    p.add_argument("image", nargs="?", help="TIFF / OME-TIFF file or (OME-)zarr folder (optional with --project)")
    g = p.add_argument_group("prompts")
    g.add_argument("--point", action="append", type=c.point, metavar="SLICE,ROW,COL",
                   help="a positive click on object --obj (repeatable; clicks on one slice form one prompt)")
    g.add_argument("--negative", action="append", type=c.point, metavar="SLICE,ROW,COL",
                   help="a negative click (background) on object --obj")
    g.add_argument("--box", action="append", type=c.box, metavar="SLICE,R0,C0,R1,C1",
                   help="a box on object --obj: rows R0..R1-1, cols C0..C1-1")
    g.add_argument("--obj", type=c.obj_id, default=None,
                   help="object id of --point/--negative/--box, and the first id for prompt files that name none "
                        "(default 1; with an existing --project, the next id it has not used: a new object)")
    g.add_argument("--prompts", action="append", metavar="FILE",
                   help="prompts file: JSON, or a napari Points/Shapes CSV (repeatable). Ids: JSON 'obj' and a CSV "
                        "obj column are kept; otherwise a Points CSV is one object and each Shapes rectangle its "
                        "own, numbered on from the ids already used; two sources on one object's slice are refused")
    g.add_argument("--seed-labels", help="labels TIFF: every object on --seed-slice becomes a mask prompt")
    g.add_argument("--seed-slice", type=c.index, default=0, help="the slice of --seed-labels to start from")
    g = p.add_argument_group("propagation")
    g.add_argument("--start", type=c.index, help="first slice to propagate to (default: the first)")
    g.add_argument("--stop", type=c.index, help="last slice to propagate to, inclusive (default: the last)")
    g.add_argument("--max-absent", type=c.max_absent, help=c.MAX_ABSENT_HELP)
    g = p.add_argument_group("output")
    g.add_argument("--out", help="labels file to write: .tif/.tiff (compressed) or .zarr (OME-Zarr), uint32")
    g.add_argument("--project", help="annotation project folder (.sam): opened if it exists, else written")
    g.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--cache-dir", type=c.cache_dir, default=None, help="embeddings cache folder (default: the user cache)")
    c.image_args(p)
    c.model_args(p)
    p.set_defaults(func=run)


def _view(frames, opts, img) -> View:
    spatial = frames.spatial_axes
    return View(len(frames), frames.frame_shape, opts["axis"], spatial, frames.fixed, opts["channel_axis"], len(img.shape))


def collect(args, view: View, frames) -> list[Item]:
    """Every prompt from the flags and files, checked against the image, with the object ids
    of docs/cli.md ("Object ids"): flags are object --obj; a file naming its ids keeps them; a
    file naming none (napari CSV) takes the next ids nobody else uses, from --obj on. Prompts of
    one object on one slice merge within one source; from two sources they are refused."""
    from ._prompts import _json_box

    obj = 1 if args.obj is None else args.obj
    flags: list[Item] = []
    for flag, label in (("point", 1), ("negative", 0)):
        for z, r, col in getattr(args, flag) or []:
            where = f"--{flag} {z},{r:g},{col:g}"
            view.check_point(r, col, where)
            flags.append(Item(obj, view.check_index(z, where), [[r, col]], [label], where=where))
    for z, r0, c0, r1, c1 in args.box or []:
        where = f"--box {z},{r0:g},{c0:g},{r1:g},{c1:g}"
        flags.append(Item(obj, view.check_index(z, where), box=_json_box([r0, c0, r1, c1], view, where), where=where))
    prompted = sorted({it.index for it in flags if it.box is not None or 1 in it.labels})
    if len(prompted) > 1:  # several nuclei meant as several objects? say what it is
        print(f"prompts: the --point/--box flags are ONE object ({obj}) prompted on slices "
              f"{', '.join(map(str, prompted))}; for several objects give --prompts FILE (or one run per --obj)")
    sources = [("the --point/--negative/--box flags", flags, False)] if flags else []
    sources += [(Path(path).name, *read_prompts(path, view, obj=1)) for path in args.prompts or []]
    taken = {it.obj for _, items, auto in sources if not auto for it in items}
    next_id, named = obj, []
    for name, items, auto in sources:
        if auto:
            ids = {}
            for o in sorted({it.obj for it in items}):
                while next_id in taken:
                    next_id += 1
                if next_id > c.MAX_ID:
                    raise PromptError(f"--prompts {name}: no object id left under {c.MAX_ID}")
                ids[o] = next_id
                taken.add(next_id)
            for it in items:
                it.obj = ids[it.obj]
        objs = sorted({it.obj for it in items})
        named.append(f"{name}: {'object' if len(objs) == 1 else 'objects'} {_ranges(objs)}")
    merged: dict[tuple[int, int], tuple[Item, str]] = {}
    for name, items, _ in sources:
        for it in items:
            key = (it.obj, it.index)
            if key not in merged:
                merged[key] = Item(it.obj, it.index, list(it.points), list(it.labels), it.box, it.where), name
                continue
            m, first = merged[key]
            if first != name:
                raise PromptError(f"{it.where} and {m.where} both prompt object {it.obj} on slice {it.index}: "
                                  "give them different ids (an obj column / JSON \"obj\", --obj) or put them in one file")
            if it.box is not None and m.box is not None:
                raise PromptError(f"{it.where}: object {it.obj} already has a box on slice {it.index} ({m.where})")
            m.points += it.points
            m.labels += it.labels
            m.box = m.box if it.box is None else it.box
    if len(sources) > 1:
        print("prompts: " + "; ".join(named))
    return [m for m, _ in merged.values()]


def _warn_empty(prompted: list[int], labels: np.ndarray) -> None:
    """Say so when a prompted object got no pixel in the labels written (as Annotation.commit does)."""
    import warnings

    missing = sorted(set(prompted) - set(np.unique(labels).tolist()))
    if missing:
        warnings.warn(f"{'object' if len(missing) == 1 else 'objects'} {_ranges(missing)} got no pixel: SAM found "
                      "nothing there, or another object, prompted nearer or more confident, won each of its pixels",
                      UserWarning, stacklevel=2)


def check_positive(items, seeded=(), known=()) -> None:
    """Every object prompted needs something saying where it is, a positive point or a box (or a seed
    mask), on some slice: negative points alone make SAM segment an arbitrary patch. ``known``: objects
    a project already has (a negative click is then a correction)."""
    ok = {it.obj for it in items if it.obj in seeded or it.obj in known or it.box is not None or 1 in it.labels}
    bad = [it for it in items if it.obj not in ok]
    if bad:
        places = ", ".join(it.where for it in bad if it.obj == bad[0].obj)
        raise PromptError(f"object {bad[0].obj} has only negative points ({places}): add a positive point "
                          "(--point) or a box where it is")


def _ranges(ids: list[int]) -> str:
    """[3, 4, 5, 9] -> '3-5, 9'."""
    out, k = [], 0
    while k < len(ids):
        j = k
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        out.append(str(ids[k]) if j == k else f"{ids[k]}-{ids[j]}")
        k = j + 1
    return ", ".join(out)


def seed_masks(path: str, index: int, frames, view: View) -> dict[int, np.ndarray]:
    """Slice ``index`` of a labels file shaped like the image (or one 2D labels plane): {id: mask}."""
    from ..io import read_image

    where = f"--seed-labels {path}"
    seeds = read_image(path).data
    shape = tuple(frames.frame_shape)
    if tuple(seeds.shape) == shape:
        plane = np.asarray(seeds)
    elif len(seeds.shape) == 3 and tuple(seeds.shape[1:]) == shape:
        if not 0 <= index < seeds.shape[0]:
            raise PromptError(f"--seed-slice {index} is out of range: {Path(path).name} has {seeds.shape[0]} slices")
        plane = np.asarray(seeds[index])
    else:
        raise PromptError(f"{where}: shape {tuple(seeds.shape)} is neither a {shape} slice nor a stack of them")
    view.check_index(index, f"--seed-slice {index}")
    if plane.dtype.kind not in "biu":
        raise PromptError(f"{where}: labels must be integers, not {plane.dtype}")
    ids = np.unique(plane)
    ids = ids[ids != 0]
    if len(ids) == 0:
        raise PromptError(f"{where}: slice {index} holds no object")
    if ids.min() < 0 or ids.max() > c.MAX_ID:
        raise PromptError(f"{where}: ids must be 1..{c.MAX_ID}")
    return {int(o): plane == o for o in ids}


def run(args) -> int:
    from ..io import check_output, write_labels

    if args.image is None and args.project is None:
        raise SamStackError("give an IMAGE (or --project PROJECT to re-run a saved project)")
    if args.out is None and args.project is None:
        raise SamStackError("give --out LABELS (a .tif or .zarr to write) and/or --project FOLDER")
    project = Path(args.project).expanduser() if args.project else None
    if args.start is not None and args.stop is not None and args.stop < args.start:
        raise SamStackError(f"--stop {args.stop} is before --start {args.start}")
    if args.image is None and not (project and project.exists()):
        raise SamStackError(f"--project {args.project}: no such project (give an IMAGE to make one)")
    protect = [p for p in (args.image, args.seed_labels, project, *(args.prompts or [])) if p]
    if args.out:  # every check that needs no model, first
        check_output(args.out, overwrite=args.overwrite, protect=protect)
    if project is not None and project.exists():
        _from_project(args, project)
    if args.image is not None:
        img, opts, frames = c.open_view(args.image, args)
        view = _view(frames, opts, img)
        items = collect(args, view, frames)
        for name, v in (("--start", args.start), ("--stop", args.stop)):
            if v is not None:
                view.check_index(v, f"{name} {v}")
        seeds = seed_masks(args.seed_labels, args.seed_slice, frames, view) if args.seed_labels else {}
        if not items and not seeds and not (project and project.exists()):
            raise SamStackError("no prompt: give --point, --box, --prompts FILE or --seed-labels")
        if not (project and project.exists()):
            check_positive(items, seeded=seeds)
    else:
        img = opts = None
        items, seeds = [], {}
        if args.point or args.box or args.prompts or args.seed_labels:
            raise SamStackError("prompts need the IMAGE they are on: give it before the options")
    args.max_absent = c.max_absent_for(args.max_absent, img, opts)
    model = c.load(args)
    if project is not None:
        from ._project import run_project

        labels, axes = run_project(args, project, img, opts, model, items, seeds)
    else:
        from ..session import Session

        s = Session(img.data, model, cache_dir=args.cache_dir, **opts)
        for it in items:
            s.add_prompt(it.obj, it.index, **it.kwargs())
        for o, mask in seeds.items():
            s.add_prompt(o, args.seed_slice, mask=mask)
        labels = propagate(s, args)
        axes = c.labels_axes(img, opts)
        _warn_empty(sorted({it.obj for it in items} | set(seeds)), labels)
    if args.out:
        written = labels if labels.shape[0] != 1 or axes != "YX" else labels[0]
        out = write_labels(args.out, written, overwrite=args.overwrite, protect=protect, axes=axes)
        ids = np.unique(labels)
        on = int((labels.reshape(len(labels), -1) > 0).any(1).sum())
        where = "" if written.ndim == 2 else f" on {c.plural(on, 'slice')}"
        print(f"wrote {out}: {c.plural(len(ids) - (ids[0] == 0), 'object')}{where}, "
              f"{'x'.join(map(str, written.shape))} {labels.dtype}")
    return 0


def _from_project(args, project: Path) -> None:
    """Defaults an existing project sets: its own model (unless --model / --checkpoint is given),
    and new prompts from flags / unnumbered files on a new object (unless --obj is given)."""
    from ..models import available_models
    from ..project import saved_summary

    saved = saved_summary(project)
    if args.obj is None:
        args.obj = saved["top_id"] + 1
    if not args.checkpoint and not getattr(args, "model_given", True):
        if saved["model"] not in available_models():
            raise SamStackError(f"--project {project}: it was made with the local model {saved['model']!r}: give "
                                "its --checkpoint FILE (and --config / --model-type)")
        args.model = saved["model"]


def propagate(session, args) -> np.ndarray:
    """Propagate every object of ``session`` into (N, Y, X) uint32 labels (a 2D image: its one slice)."""
    labels = np.zeros(session.shape, np.uint32)
    if session.model.family != "sam2" or len(session) == 1:  # SAM 1, or one 2D image: each prompt on its slice
        return _predict_each(session, labels)
    with c.Progress("propagate", "step") as bar:
        out = session.propagate(progress=bar, start=args.start, stop=args.stop, max_absent=args.max_absent)
    return np.asarray(out, np.uint32)


def _predict_each(session, labels: np.ndarray) -> np.ndarray:
    """No propagation (SAM 1 or a 2D image): each prompt's best mask on its own slice."""
    from ..predict import predict

    for o, by_slice in sorted(session.prompts.items()):
        for i, prompt in by_slice.items():
            r = predict(session.model, session.embeddings.get(i), prompt, multimask=None)
            m = r.masks[int(np.argmax(r.scores))]
            labels[i][m & (labels[i] == 0)] = o
    return labels
