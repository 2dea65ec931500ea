"""Segment everything: every instance on a slice, and 3D / time instances by propagating them all.

2D, SAM 1 and SAM 2: :func:`generate` runs the official automatic mask generators'
pipeline (``SamAutomaticMaskGenerator`` / ``SAM2AutomaticMaskGenerator``: point grid,
batches, predicted-IoU and stability thresholds, box NMS, crop layers, small regions) on
the slice's CACHED embedding through the fast decoder (see :mod:`._amg`), and paints the
kept masks into one instance label image.

Painting rule (non-overlapping instances): masks are ranked by quality =
predicted IoU x stability score, best first; equal quality: the smaller mask first. Each
mask takes only the pixels no better-ranked mask took, so a better mask is never erased by
a worse or a larger one. A mask keeps its id only when at least ``min_visible_fraction``
of it (and at least ``min_mask_region_area`` pixels, at least 1) is left; ids are 1, 2, ...
in rank order.

3D / time, SAM 2: :func:`add_automatic` turns the instances of key slices into objects of an
:class:`~napari_sam_stack.annotation.Annotation` and propagates them (see its docstring).
:func:`run` does either for the command line and scripts.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, fields, replace

import numpy as np

from ._validate import finite_number, flag, integer_in, positive_or_none
from .errors import AutomaticError, ModelFamilyError

MICROSCOPY = {
    "points_per_side": 32,
    "pred_iou_thresh": 0.8,
    "stability_score_thresh": 0.9,
    "box_nms_thresh": 0.7,
    "min_mask_region_area": 25,
    "max_area_fraction": 0.25,
    "multimask": True,
}
"""Defaults for fluorescence microscopy (the widget's and ``napari-sam-stack auto``'s): both
models' predicted IoU at SAM 2's 0.8, stability 0.9 (cells and nuclei have soft edges),
holes/islands under 25 pixels removed (a nucleus is ~100 pixels and more at usual
sampling), and masks over a quarter of the slice dropped (SAM's "background" and "whole
cluster" masks). Chosen by reasoning, not tuned: no pretrained weights on the machines
this was built on. :func:`generate`'s own defaults are the official generators'.
A registered model can carry its own (:func:`defaults`)."""


def defaults(model=None) -> dict:
    """The segment-everything defaults for ``model`` (a :class:`~napari_sam_stack.LoadedModel`, a registry name
    or None): :data:`MICROSCOPY`, updated by what the model's registry entry sets (``ModelSpec.automatic``,
    e.g. thresholds that suit a model whose IoU head is less confident). The widget and ``napari-sam-stack auto``
    start from these."""
    from .models import available_models, model_spec

    name = model if isinstance(model, str) or model is None else getattr(model, "name", None)
    own = model_spec(name).automatic if name in available_models() else {}
    return {**MICROSCOPY, **own}


class NothingFoundWarning(UserWarning):
    """Segment-everything found no instance (an empty or constant slice, or thresholds too strict)."""


@dataclass(frozen=True)
class Params:
    """Validated segment-everything parameters (names and meanings as the official generators').

    ``pred_iou_thresh=None``: the family's official default (SAM 1 0.88, SAM 2 0.8);
    ``mask_threshold=None``: the model's (SAM 1 ``mask_threshold``, SAM 2 0.0);
    ``multimask``: three candidates per point (SAM 2's ``multimask_output``; SAM 1 always
    used three); ``max_area_fraction``: masks larger than this fraction of the slice are
    dropped before painting (1.0 keeps all); ``min_visible_fraction``: see the painting rule.
    """

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float | None = None
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    mask_threshold: float | None = None
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    min_mask_region_area: int = 0
    multimask: bool = True
    max_area_fraction: float = 1.0
    min_visible_fraction: float = 0.5

    @classmethod
    def make(cls, model=None, **params) -> Params:
        """Check every parameter (:class:`AutomaticError` naming it) and fill the model's defaults."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - names)
        if unknown:
            raise AutomaticError(f"unknown segment-everything parameter(s) {unknown}; known: {sorted(names)}")
        p = replace(cls(), **params)
        E = AutomaticError
        ints = {"points_per_side": (1, 1024), "points_per_batch": (1, 65536), "crop_n_layers": (0, 6),
                "crop_n_points_downscale_factor": (1, 64), "min_mask_region_area": (0, 2**31 - 1)}
        fractions = ("stability_score_thresh", "box_nms_thresh", "crop_nms_thresh", "max_area_fraction",
                     "min_visible_fraction")
        checked = {k: integer_in(getattr(p, k), k, lo, hi, E) for k, (lo, hi) in ints.items()}
        for k in fractions:
            checked[k] = _fraction(getattr(p, k), k)
        if p.pred_iou_thresh is not None:
            checked["pred_iou_thresh"] = _fraction(p.pred_iou_thresh, "pred_iou_thresh")
        elif model is not None:
            checked["pred_iou_thresh"] = 0.88 if model.family == "sam" else 0.8
        checked["stability_score_offset"] = finite_number(p.stability_score_offset, "stability_score_offset", E,
                                                          minimum=0.0)
        overlap = finite_number(p.crop_overlap_ratio, "crop_overlap_ratio", E, minimum=0.0)
        if overlap >= 1:
            raise E(f"crop_overlap_ratio must be in [0, 1), got {p.crop_overlap_ratio!r}")
        checked["crop_overlap_ratio"] = overlap
        if p.mask_threshold is not None:
            checked["mask_threshold"] = finite_number(p.mask_threshold, "mask_threshold", E)
        elif model is not None:
            checked["mask_threshold"] = float(model.module.mask_threshold) if model.family == "sam" else 0.0
        checked["multimask"] = flag(p.multimask, "multimask", error=E)
        if p.points_per_side // p.crop_n_points_downscale_factor ** p.crop_n_layers < 1:
            raise E(f"points_per_side={p.points_per_side} leaves no point in crop layer {p.crop_n_layers} "
                    f"(downscaled by {p.crop_n_points_downscale_factor} per layer)")
        return replace(p, **checked)


def _fraction(value, what: str) -> float:
    x = finite_number(value, what, AutomaticError)
    if not 0.0 <= x <= 1.0:
        raise AutomaticError(f"{what} must be in [0, 1], got {value!r}")
    return x


def _session(target):
    """A Session from a Session or an Annotation."""
    from .session import Session

    s = getattr(target, "session", target)
    if not isinstance(s, Session):
        raise AutomaticError(f"expected a Session or an Annotation, got {type(target).__name__}")
    return s


# ---------------------------------------------------------------- 2D


def generate(session, index: int = 0, *, progress=None, cancel=None, **params):
    """Every instance on slice ``index``: ``(labels, records)``.

    ``session``: a :class:`~napari_sam_stack.Session` (or an Annotation: its session).
    ``labels``: (Y, X) uint32, 0 = background, ids 1..n in rank order (see the module's
    painting rule); ``records``: one dict per id, ``id``, ``area`` (painted pixels),
    ``bbox`` (row_min, col_min, row_max, col_max), half-open like skimage's regionprops (a
    valid box prompt), ``predicted_iou``, ``stability_score``, ``point`` (row, col) of the
    grid point that found it, ``mask_area`` (pixels of the whole mask before painting).

    Parameters: :class:`Params` (the official generators' names and defaults;
    :data:`MICROSCOPY` holds defaults for microscopy). Uses the slice's cached embedding
    (computed now if missing); crops (``crop_n_layers`` > 0) get their own, cached too.
    ``progress(done, total)`` counts point batches; ``cancel()`` returning True raises
    :class:`~napari_sam_stack.errors.Cancelled`. An empty or constant slice, or no mask
    passing the thresholds, gives empty labels, ``[]`` and a :class:`NothingFoundWarning`.
    """
    s = _session(session)
    p = Params.make(s.model, **params)
    i = s._index(index)
    shape = s.frames.frame_shape
    raw = np.asarray(s.frames.raw(i))
    if raw.size == 0 or (raw == raw.flat[0]).all():
        warnings.warn(f"slice {i} is constant: nothing to segment", NothingFoundWarning, stacklevel=2)
        return np.zeros(shape, np.uint32), []
    from ._amg import slice_masks

    data = slice_masks(s, i, p, progress=progress, cancel=cancel)
    labels, records = paint(data, shape, p)
    if not records:
        warnings.warn(f"slice {i}: no instance passed the thresholds (pred_iou_thresh={p.pred_iou_thresh:g}, "
                      f"stability_score_thresh={p.stability_score_thresh:g}); try lower ones",
                      NothingFoundWarning, stacklevel=2)
    return labels, records


def paint(data, shape, p: Params):
    """The kept masks (an :class:`._amg.MaskSet`) as non-overlapping labels and records."""
    labels = np.zeros(shape, np.uint32)
    areas = np.array([c.area for c in data.masks], np.int64)
    big = areas > p.max_area_fraction * shape[0] * shape[1]
    quality = data.iou.astype(np.float64) * data.stability.astype(np.float64)
    order = np.lexsort((np.arange(len(areas)), areas, -quality))
    records = []
    least = max(1, p.min_mask_region_area)
    for k in order:
        if big[k]:
            continue
        m, r, c = data.masks[k].mask, data.masks[k].row, data.masks[k].col
        region = labels[r : r + m.shape[0], c : c + m.shape[1]]
        free = m & (region == 0)
        n = int(free.sum())
        if n < least or n < p.min_visible_fraction * areas[k]:
            continue
        new = len(records) + 1
        region[free] = new
        rows, cols = np.flatnonzero(free.any(1)), np.flatnonzero(free.any(0))
        x, y = data.points[k]
        records.append({
            "id": new, "area": n,
            "bbox": (r + int(rows[0]), c + int(cols[0]), r + int(rows[-1]) + 1, c + int(cols[-1]) + 1),
            "predicted_iou": float(data.iou[k]), "stability_score": float(data.stability[k]),
            "point": (float(y), float(x)), "mask_area": int(areas[k]),
        })
    return labels, records


# ---------------------------------------------------------------- 3D / time


@dataclass
class AutomaticResult:
    """What :func:`add_automatic` did: the new objects' ids (in order), for each the key slice
    and 2D record id it came from, and per key slice the instances found and skipped."""

    obj_ids: list
    sources: dict  # obj_id -> (key slice, record id on that slice)
    found: dict  # key slice -> number of instances segment-everything found there
    skipped: dict  # key slice -> number skipped as already covered
    propagated: bool = False

    @property
    def message(self) -> str:
        keys = ", ".join(f"{k}: {self.found[k]} found, {self.skipped[k]} covered" for k in self.found)
        return f"{len(self.obj_ids)} new object(s) from key slice(s) {keys or 'none'}"


class Automatic:
    """3D / time segment-everything over an annotation, in steps a GUI can spread over threads.

    ``find(k)`` (heavy, no change to the annotation: a worker thread) runs :func:`generate`
    on key slice ``k`` and drops the instances already covered; ``seed(k, found)`` (cheap,
    changes the annotation: the main thread) makes them objects; then propagate those ids
    (``annotation.propagation(ids)``). :func:`add_automatic` chains the steps in one thread.
    """

    def __init__(self, annotation, key_slices=None, *, every=None, overlap_thresh: float = 0.5, **params):
        s = _session(annotation)
        if s.model.family != "sam2":
            raise ModelFamilyError("3D segment-everything propagates instances with SAM 2 memory; this is a SAM 1 "
                                   "model. Use automatic.generate(session, index) for one slice, or a SAM 2 model.")
        self.annotation, self.session = annotation, s
        self.params = asdict(Params.make(s.model, **params))
        self.overlap_thresh = _fraction(overlap_thresh, "overlap_thresh")
        n = len(s)
        keys = set()
        if key_slices is not None:
            ks = [key_slices] if np.ndim(key_slices) == 0 else list(key_slices)
            keys.update(integer_in(k, "key slice", 0, n - 1, AutomaticError) for k in ks)
        if every is not None:
            keys.update(range(0, n, integer_in(every, "every", 1, max(n, 1), AutomaticError)))
        if not keys:
            raise AutomaticError("no key slice: pass key_slices=[k, ...] and/or every=k")
        self.keys = sorted(keys)

    def covered(self, k: int) -> np.ndarray:
        """(Y, X) bool: slice ``k``'s pixels taken by an object of the annotation or a committed label."""
        return covered(self.annotation, k)

    def find(self, k: int, progress=None, cancel=None):
        """``(masks, records, skipped)``: the instances of key slice ``k`` not covered yet.

        Overlap rule: an instance more than ``overlap_thresh`` (default half) of whose
        pixels are already covered on that slice (by any object's mask or committed label)
        is skipped."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NothingFoundWarning)
            labels, records = generate(self.session, k, progress=progress, cancel=cancel, **self.params)
        return not_covered(self.annotation, k, labels, records, self.overlap_thresh)

    def seed(self, k: int, masks, records) -> dict:
        """New objects, in record order, each with its 2D mask as prompt on key slice ``k``;
        returns ``{obj_id: record id}``."""
        a, out = self.annotation, {}
        for m, rec in zip(masks, records):
            o = a.new_object()
            a.add_prompt(o, k, mask=m)
            out[o] = rec["id"]
        return out


def covered(annotation, k: int) -> np.ndarray:
    """(Y, X) bool: slice ``k``'s pixels taken by an object of ``annotation`` or a committed label."""
    cover = np.asarray(annotation.labels[k]) > 0
    for o in annotation.objects:
        m = annotation.mask(o, k)
        if m is not None:
            cover |= m
    return cover


def not_covered(annotation, k: int, labels, records, overlap_thresh: float = 0.5):
    """``(masks, records, skipped)``: the instances :func:`generate` found on slice ``k`` (``labels``,
    ``records``) that ``annotation`` does not have yet: one more than ``overlap_thresh`` of whose pixels
    an object's mask or a committed label already covers there is skipped (2D and 3D alike)."""
    overlap_thresh = _fraction(overlap_thresh, "overlap_thresh")
    cover = covered(annotation, k)
    masks, kept, skipped = [], [], 0
    for rec in records:
        m = np.asarray(labels) == rec["id"]
        if (m & cover).sum() > overlap_thresh * rec["area"]:
            skipped += 1
            continue
        masks.append(m)
        kept.append(rec)
    return masks, kept, skipped


def add_automatic(annotation, key_slices=None, *, every=None, overlap_thresh: float = 0.5, propagate: bool = True,
                  commit: bool = False, max_absent=None, progress=None, cancel=None, **params) -> AutomaticResult:
    """3D / time instances: segment everything on key slices and propagate the instances.

    For each key slice in order (``key_slices`` and/or every ``every``-th slice): run
    :func:`generate` there, skip the instances already covered (see :meth:`Automatic.find`),
    make the others new objects (ids in rank order, each prompted by its 2D mask on the
    key slice) and propagate them in ONE batched run (``annotation.propagate``), so the next
    key slice sees them. Afterwards they are ordinary objects (select, correct,
    re-propagate). ``commit=True`` commits the new objects as one edit (one undo step).
    ``max_absent``: each new object's track (each direction) ends after this many slices where
    SAM 2 calls it absent (as in ``annotation.propagate``; 1 suits z-stacks of nuclei, whose
    tracks otherwise run on through the whole stack). ``progress(done, total)`` counts key slices. Needs SAM 2 (:class:`ModelFamilyError`);
    bad parameters raise :class:`AutomaticError` before any work, leaving the labels alone.
    """
    max_absent = positive_or_none(max_absent, "max_absent", AutomaticError)
    auto = Automatic(annotation, key_slices, every=every, overlap_thresh=overlap_thresh, **params)
    propagate = flag(propagate, "propagate", error=AutomaticError)
    commit = flag(commit, "commit", error=AutomaticError)
    result = AutomaticResult([], {}, {}, {}, propagated=propagate)
    for done, k in enumerate(auto.keys):
        if progress is not None:
            progress(done, len(auto.keys))
        masks, records, skipped = auto.find(k, cancel=cancel)
        result.found[k], result.skipped[k] = len(records) + skipped, skipped
        ids = auto.seed(k, masks, records)
        for o, r in ids.items():
            result.obj_ids.append(o)
            result.sources[o] = (k, r)
        if ids and propagate:
            annotation.propagate(obj_ids=list(ids), cancel=cancel, max_absent=max_absent)
    if progress is not None:
        progress(len(auto.keys), len(auto.keys))
    if not result.obj_ids:
        warnings.warn("segment-everything found no new instance on key slice(s) "
                      f"{auto.keys}", NothingFoundWarning, stacklevel=2)
    elif commit:
        annotation.commit(result.obj_ids)
    return result


def run(target, index=None, key_slices=None, *, every=None, **params):
    """One call for the CLI and scripts: 2D :func:`generate` on slice ``index`` of a Session or
    Annotation (returns ``(labels, records)``), or 3D :func:`add_automatic` on an Annotation when
    ``key_slices`` or ``every`` is given (returns the :class:`AutomaticResult`)."""
    if key_slices is None and every is None:
        return generate(target, 0 if index is None else index, **params)
    if index is not None:
        raise AutomaticError("give either index (2D, one slice) or key_slices / every (3D), not both")
    if not hasattr(target, "objects"):
        raise AutomaticError("3D segment-everything needs an Annotation (nss.Annotation(image, model)), not a Session")
    return add_automatic(target, key_slices, every=every, **params)
