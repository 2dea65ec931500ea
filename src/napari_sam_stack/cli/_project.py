"""``segment --project``: run on a saved annotation project, or write one (Annotation save / open)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import _common as c


def run_project(args, project: Path, img, opts, model, items, seeds):
    """Open ``project`` (with IMAGE when given, else the image it names) or make one from IMAGE;
    add the prompts, propagate and commit the objects prompted now and those not committed yet
    (committed ones are left as they are), save the project.
    Returns ``(labels, axes)``."""
    from ..annotation import Annotation, Status

    if project.exists():  # its own settings (slice axis, channels, ...) define the frames
        a = Annotation.open(project, image=None if img is None else img.data, model=model, cache_dir=args.cache_dir)
        from ._segment import check_positive

        check_positive(items, seeded=seeds, known={o for o, obj in a.objects.items() if obj.prompts})
    else:
        a = Annotation(img.data, model, cache_dir=args.cache_dir, **opts)
        a.source = str(Path(args.image).resolve())
    for it in items:
        if it.obj not in a.objects:
            a.new_object(it.obj)
        a.add_prompt(it.obj, it.index, **it.kwargs())
    for o, mask in seeds.items():
        if o not in a.objects:
            a.new_object(o)
        a.add_prompt(o, args.seed_slice, mask=mask)
    changed = {it.obj for it in items} | set(seeds)
    # committed objects nobody prompted now are the user's result (maybe curated in napari): left as they are
    todo = [o for o, obj in a.objects.items() if obj.prompts and (o in changed or obj.status != Status.COMMITTED)]
    if todo and a.session.model.family == "sam2" and len(a.session) > 1:
        with c.Progress("propagate") as bar:
            a.propagate(todo, progress=bar, start=args.start, stop=args.stop, max_absent=args.max_absent)
    if todo:
        a.commit(todo)  # never over another object's pixels
    a.save(project, overwrite=True)
    kept = sum(1 for o, obj in a.objects.items() if o not in todo and obj.status == Status.COMMITTED)
    print(f"saved project {project}: {c.plural(len(a.objects), 'object')} ({len(todo)} propagated and committed now"
          f"{f', {kept} committed before and left as they were' if kept else ''})")
    axis = a.session.axis
    letter = "Z" if img is None or axis is None else (img.axes[axis] if img.axes[axis] in "TZ" else "Z")
    return np.asarray(a.labels, np.uint32), ("YX" if axis is None else letter + "YX")
