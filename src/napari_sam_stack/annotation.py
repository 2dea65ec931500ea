"""Annotation: the user's whole job on one image — every object, its status, the committed labels.

Qt-free and evented (psygnal): the napari widget is a view over one, the console and
scripts drive the same object. See docs/annotation.md.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ._masks import LabelsEdit, MaskStack, apply_edit, commit_edit, confidence, delete_edit, mask_confidence
from ._masks import labels_state, slices_with, winners
from ._objects import AnnotatedObject, AnnotationEvents, PropagationRun, Status, check_ids, conditioning_for
from ._objects import mask_only, predict_with_logits
from ._persist import Persistence
from ._validate import finite_number, flag, integer, object_id, positive_or_none
from .errors import AnnotationError
from .prompts import Prompt, make_prompt
from .session import Session, _in_slice


class Annotation(Persistence):
    """Every object of one image or stack, and its committed labels.

    ``Annotation(image, model, axis=0, labels=None, **session_options)`` wraps a
    :class:`~napari_sam_stack.Session` (``a.session``; the options go to it).
    ``labels``: an existing (N, Y, X) integer numpy array (for a 2D image (Y, X) or
    (1, Y, X)) used in place as ``a.labels``; default a new uint32 array. Its ids are
    never given to new objects.
    """

    def __init__(self, image: Any, model: Any, axis: int | None = 0, *, labels=None, autosave: bool | None = None,
                 autosave_every: float = 120.0, **session_options):
        autosave = flag(autosave, "autosave", allow_none=True, error=AnnotationError)
        autosave_every = finite_number(autosave_every, "autosave_every", AnnotationError, minimum=0)
        source = None
        if isinstance(image, (str, os.PathLike)):
            from .project import read_image

            source, image = str(Path(image).expanduser().resolve()), read_image(image)
        if isinstance(image, Session) and (session_options or (model is not None and model is not image.model)):
            raise AnnotationError("an Annotation over a Session takes the session's model and options: "
                                  "use Annotation.from_session(session, labels=...)")
        session = image if isinstance(image, Session) else Session(image, model, axis, **session_options)
        self.session: Session = session
        self.labels: np.ndarray = self._check_labels(labels)
        self.objects: dict[int, AnnotatedObject] = {}
        self.events = AnnotationEvents()
        self.labels_writer: Callable[[LabelsEdit], None] = lambda edit: apply_edit(self.labels, edit)
        self._deleted: dict[int, AnnotatedObject] = {}  # kept so that an undone delete brings the object back
        self._top_id = int(self.labels.max()) if self.labels.size else 0
        self.source: str | None = source  # the image file, when known (saved with the project)
        self.project_path = None  # where save() last wrote / open() read
        self.autosave = (not session.embeddings.in_memory) if autosave is None else bool(autosave)
        self.autosave_every = autosave_every
        self._dirty_slices: set[int] | None = set(range(len(session)))  # labels slices changed since the autosave
        self._changed = False  # anything changed since the last autosave
        self._last_autosave = time.monotonic()
        self._autosaved_to = None

    @classmethod
    def from_session(cls, session: Session, labels=None, **kw) -> Annotation:
        """An annotation over an existing session (its embeddings and model are shared)."""
        if not isinstance(session, Session):
            raise AnnotationError(f"from_session needs a Session, got {type(session).__name__}")
        return cls(session, None, labels=labels, **kw)

    def with_session(self, session: Session) -> Annotation:
        """This work continued over another session of the same image and view, typically with
        another model (a finetuned one): every object (prompts, candidates, masks, statuses) copied,
        the same labels array. Masks stay what the old model made until predicted or propagated again
        (as ``Annotation.open(..., allow_model_change=True)`` does from a project)."""
        from ._objects import carried_over

        return carried_over(self, session)

    def _check_labels(self, labels) -> np.ndarray:
        shape = self.session.shape
        if labels is None:
            return np.zeros(shape, np.uint32)
        if not isinstance(labels, np.ndarray):
            raise AnnotationError(f"labels must be a numpy array (it is written in place), got {type(labels).__name__}")
        if labels.ndim == 2 and self.session.axis is None:
            labels = labels[None]
        if labels.shape != shape or labels.dtype.kind not in "ui":
            raise AnnotationError(f"labels must be an integer array of shape {shape}, got {labels.shape} {labels.dtype}")
        if not labels.flags.writeable:
            raise AnnotationError("labels must be a writeable array")
        return labels

    def __repr__(self) -> str:
        counts = {s: sum(o.status == s for o in self.objects.values()) for s in Status.ALL}
        return f"Annotation({len(self.objects)} objects {counts}, {self.session!r})"

    # ------------------------------------------------------------------ objects
    def _object(self, obj_id) -> AnnotatedObject:
        o = object_id(obj_id, AnnotationError)
        if o not in self.objects:
            known = ", ".join(map(str, self.objects)) or "none yet (a.new_object())"
            raise AnnotationError(f"no object {obj_id!r} in this annotation; objects: {known}")
        return self.objects[o]

    def new_object(self, obj_id=None) -> int:
        """A new object; returns its id, the next free one (above every object and label ever seen).

        ``obj_id``: take that id instead. When the labels hold pixels of it (a label painted
        or loaded without an object), the object adopts them: it is committed, its masks are
        those pixels, and it can be refined and re-committed like any other.
        """
        if obj_id is None:
            self._top_id = max(self._top_id, int(self.labels.max()) if self.labels.size else 0)
            o = self._top_id + 1
            if o > np.iinfo(self.labels.dtype).max:
                raise AnnotationError(f"no free id left in {self.labels.dtype} labels")
        else:
            o = self._check_fits(object_id(obj_id, AnnotationError))
            if o in self.objects:
                raise AnnotationError(f"object {o} exists already")
        obj = AnnotatedObject(o, MaskStack(self.session.frames.frame_shape))
        self._deleted.pop(o, None)
        if obj_id is not None:
            for z in slices_with(self.labels, [o]):
                obj.masks.set(z, mask_confidence(self.labels[z] == o))
            if len(obj.masks):
                obj.committed, obj.status = True, Status.COMMITTED
        self._top_id = max(self._top_id, o)
        self.objects[o] = obj
        self.events.object_added.emit(o)
        return o

    def _check_fits(self, o: int) -> int:
        if o > np.iinfo(self.labels.dtype).max:
            raise AnnotationError(f"object id {o} does not fit the {self.labels.dtype} labels")
        return o

    def _set_status(self, obj: AnnotatedObject, status: str) -> None:
        if obj.status != status:
            obj.status = status
            self.events.status_changed.emit(obj.id, status)

    def _touched(self, obj: AnnotatedObject) -> None:
        """The object's prompts or masks changed (not from a propagation)."""
        obj.version += 1
        obj.propagated = False
        self._set_status(obj, Status.EDITED if obj.committed else Status.DRAFT)
        self._changed = True
        self.events.object_changed.emit(obj.id)

    # ------------------------------------------------------------------ prompts
    def add_prompt(self, obj_id, index, points=None, point_labels=None, box=None, mask=None):
        """Set the prompt of object ``obj_id`` on slice ``index`` (replacing one there), predict
        that slice (one decoder call) and store its mask (candidate 0, the best). Returns the
        :class:`~napari_sam_stack.Prediction`. Coordinates as :meth:`Session.predict`."""
        obj = self._object(obj_id)
        i = self.session._index(index)
        prompt = make_prompt(self.session.frames.frame_shape, _in_slice(points, i), point_labels, box, mask)
        pred = None
        if mask_only(prompt):
            conf = mask_confidence(prompt.mask)
        else:
            pred, logits = self._predict(prompt, i)
            conf = confidence(logits[0], 0.0)
        obj.prompts[i] = prompt
        obj.candidate.pop(i, None)
        obj.masks.set(i, conf)
        self._sync_session(obj, i)
        self._touched(obj)
        return pred

    def remove_prompt(self, obj_id, index=None, clear_mask: bool = False) -> None:
        """Forget the object's prompt on slice ``index`` (every prompted slice when None). Its
        masks stay, unless ``clear_mask``: then the mask of that slice (the prompt's 2D result)
        goes too. Nothing changes (no event) when there was no prompt there."""
        obj = self._object(obj_id)
        clear_mask = flag(clear_mask, "clear_mask", error=AnnotationError)
        gone = [i for i in (list(obj.prompts) if index is None else [self.session._index(index)]) if i in obj.prompts]
        for i in gone:
            del obj.prompts[i]
            obj.candidate.pop(i, None)
            if clear_mask:
                obj.masks.clear(i, i)
            self._sync_session(obj, i)
        if gone:
            self._touched(obj)

    def predict(self, obj_id, index):
        """The :class:`~napari_sam_stack.Prediction` for the object's prompt on slice ``index`` (nothing stored)."""
        obj = self._object(obj_id)
        i = self.session._index(index)
        if i not in obj.prompts:
            raise AnnotationError(f"object {obj.id} has no prompt on slice {i} (prompts on {obj.prompted()})")
        return self._predict(obj.prompts[i], i)[0]

    def set_candidate(self, obj_id, index, k: int) -> None:
        """Choose SAM's candidate ``k`` (0 = best) for the object's prompt on slice ``index``;
        propagation then starts from that mask."""
        obj = self._object(obj_id)
        i = self.session._index(index)
        if i not in obj.prompts:
            raise AnnotationError(f"object {obj.id} has no prompt on slice {i} (prompts on {obj.prompted()})")
        k = integer(k, "candidate", AnnotationError)
        pred, logits = self._predict(obj.prompts[i], i)
        if not 0 <= k < len(pred):
            raise AnnotationError(f"candidate must be 0..{len(pred) - 1} for this prompt, got {k!r}")
        obj.candidate[i] = int(k)
        obj.masks.set(i, confidence(logits[k], 0.0))
        self._sync_session(obj, i)
        self._touched(obj)

    def _predict(self, prompt: Prompt, i: int):
        return predict_with_logits(self.session, prompt, i)

    def _sync_session(self, obj: AnnotatedObject, i: int) -> None:
        """Set ``obj.conditioning[i]`` (see :class:`AnnotatedObject`) from its prompt there."""
        use = conditioning_for(obj, i)
        if use is None:
            obj.conditioning.pop(i, None)
        else:
            obj.conditioning[i] = use
        self._attach(obj)

    def _attach(self, obj: AnnotatedObject) -> None:
        """Make the session propagate ``obj`` from its conditioning (or not at all without one)."""
        if obj.conditioning:
            self.session.prompts[obj.id] = obj.conditioning
        else:
            self.session.prompts.pop(obj.id, None)

    def mask(self, obj_id, index) -> np.ndarray | None:
        """The latest (Y, X) bool mask of the object on slice ``index`` (predict/propagate), or None."""
        return self._object(obj_id).masks.mask(self.session._index(index))

    # ------------------------------------------------------------------ propagation
    def propagation(self, obj_ids=None, progress=None, cancel=None, start=None, stop=None,
                    max_absent=None) -> PropagationRun:
        """A propagation of ``obj_ids`` (default: every object with prompts) in ONE batched run.

        Iterate it (e.g. in a worker thread) for ``(index, (Y, X) uint32 labels of the run's
        objects)`` as slices finish, then call ``run.apply()`` (e.g. on the main thread) to
        store the masks. Prompts are taken now: later edits do not change the run, and
        ``apply`` skips objects whose prompts changed or that were deleted meanwhile.
        """
        if obj_ids is None:
            ids = [o for o, obj in self.objects.items() if obj.conditioning]
            if not ids:
                raise AnnotationError("nothing to propagate: no object has a prompt (a.add_prompt(i, index, points=...))")
        else:
            ids = list(dict.fromkeys(self._object(o).id for o in check_ids(obj_ids)))
            for o in ids:
                if not self.objects[o].conditioning:
                    raise AnnotationError(f"object {o} has no prompt to propagate")
        max_absent = positive_or_none(max_absent, "max_absent", AnnotationError)
        n = len(self.session)
        lo = 0 if start is None else self.session._index(start)
        hi = n - 1 if stop is None else self.session._index(stop)
        if hi < lo:
            raise AnnotationError(f"empty range: start={lo} > stop={hi}")
        frames = self.session.iter_propagate(progress, cancel, start=lo, stop=hi, max_absent=max_absent, obj_ids=ids)
        return PropagationRun(self, ids, lo, hi, frames)

    def propagate(self, obj_ids=None, progress=None, cancel=None, start=None, stop=None, max_absent=None) -> list[int]:
        """Propagate ``obj_ids`` (default: every object with prompts) in one batched run and
        store their masks (``logits > 0``); status -> propagated (edited if committed).

        ``progress(done, total)``; ``cancel()`` returning True raises
        :class:`~napari_sam_stack.errors.Cancelled` and stores nothing. Returns the ids updated.
        """
        run = self.propagation(obj_ids, progress, cancel, start, stop, max_absent)
        for _ in run:
            pass
        return run.apply()

    # ------------------------------------------------------------------ labels
    def _write(self, edit: LabelsEdit) -> None:
        if len(edit):
            self.labels_writer(edit)
            if self._dirty_slices is not None:
                self._dirty_slices.update(edit.slices())
            self._changed = True
            self.events.labels_changed.emit(edit)

    def commit(self, obj_ids=None, overwrite: bool = False) -> LabelsEdit:
        """Write objects' masks into ``a.labels`` as ONE edit (one undo step in napari).

        Default: every object not committed or edited since, that has a mask. Overlap rule:
        never overwrites pixels of another label unless ``overwrite=True``; re-committing an
        object replaces exactly its previous pixels; among the objects of one commit each
        pixel goes to the object prompted nearest to its slice, then to the highest logit
        (propagated masks drift with distance from their prompts). Autosaves afterwards (when enabled).
        """
        overwrite = flag(overwrite, "overwrite", error=AnnotationError)
        if obj_ids is None:
            ids = [o for o, obj in self.objects.items() if obj.status != Status.COMMITTED and len(obj.masks)]
            if not ids:
                raise AnnotationError("nothing to commit: every object with a mask is committed already")
        else:
            ids = list(dict.fromkeys(self._object(o).id for o in check_ids(obj_ids)))
            for o in ids:
                if not len(self.objects[o].masks):
                    raise AnnotationError(f"object {o} has no mask to commit (add a prompt or propagate; "
                                          "a.delete(i) removes its pixels)")
        edit = commit_edit(self.labels, {o: self.objects[o].masks for o in ids}, overwrite=overwrite,
                           anchors=self.anchors(ids))
        self._write(edit)
        written = set(np.unique(edit.values).tolist())
        for o in ids:
            obj = self.objects[o]
            if o in written or (self.labels == o).any():  # (unchanged pixels of a re-commit)
                obj.committed = True
                self._set_status(obj, Status.COMMITTED)
            else:  # every pixel lies on other labels
                obj.committed = False
                self._set_status(obj, Status.PROPAGATED if obj.propagated else Status.DRAFT)
                warnings.warn(f"object {o}: all its pixels lie on other labels, nothing written "
                              "(commit(..., overwrite=True) replaces them)", stacklevel=2)
        self._changed = True
        self._autosave_after_change()
        return edit

    def delete(self, obj_id) -> LabelsEdit:
        """Remove the object and its committed pixels (one edit). An undo in napari followed
        by :meth:`sync_labels` brings it back."""
        obj = self._object(obj_id)
        edit = delete_edit(self.labels, [obj.id])
        self._write(edit)
        del self.objects[obj.id]
        self.session.prompts.pop(obj.id, None)
        self._deleted[obj.id] = obj
        self._changed = True
        self.events.object_removed.emit(obj.id)
        self._autosave_after_change()
        return edit

    def sync_labels(self) -> None:
        """Re-derive statuses from ``a.labels`` after an undo/redo or painting in napari: an object
        whose pixels are gone is no longer committed; one whose pixels came back is committed again,
        ``edited`` when they are not what its masks commit (e.g. an undone re-commit)."""
        stacks = {o: obj.masks for o, obj in {**self._deleted, **self.objects}.items()}
        present, differ = labels_state(self.labels, stacks)
        self._top_id = max([self._top_id, *present])
        for o, obj in list(self._deleted.items()):
            if o in present:  # an undone delete
                del self._deleted[o]
                obj.committed = True
                obj.status = Status.EDITED if o in differ else Status.COMMITTED
                self.objects[o] = obj
                self._attach(obj)
                self.events.object_added.emit(o)
        for obj in self.objects.values():
            if obj.committed and obj.id not in present:
                obj.committed = False
                self._set_status(obj, Status.PROPAGATED if obj.propagated else Status.DRAFT)
            elif obj.id in present:
                obj.committed = True
                self._set_status(obj, Status.EDITED if obj.id in differ else Status.COMMITTED)
        self._dirty_slices = None  # unknown: the next autosave writes every slice
        self._changed = True

    def preview_labels(self, index, obj_ids=None) -> np.ndarray:
        """(Y, X) uint32: the masks on slice ``index`` of the objects not committed (or edited
        since), or of ``obj_ids``; overlaps as in :meth:`commit` (nearest prompt, then highest logit)."""
        i = self.session._index(index)
        if obj_ids is None:
            stacks = [o.masks for o in self.objects.values() if o.status != Status.COMMITTED]
            ids = [o.id for o in self.objects.values() if o.status != Status.COMMITTED]
        else:
            ids = [self._object(o).id for o in check_ids(obj_ids)]
            stacks = [self.objects[o].masks for o in ids]
        return winners(self.session.frames.frame_shape, i, dict(zip(ids, stacks)), anchors=self.anchors(ids))[1]

    def anchors(self, obj_ids) -> dict[int, list[int]]:
        """``{obj_id: its prompted slices}``: what decides overlaps between objects (:meth:`commit`)."""
        return {o: self.objects[o].prompted() for o in obj_ids if o in self.objects}

    def add_automatic(self, key_slices=None, **params):
        """Objects from segment-everything on ``key_slices`` (see :mod:`napari_sam_stack.automatic`)."""
        from . import automatic

        return automatic.add_automatic(self, key_slices, **params)


__all__ = ["Annotation", "AnnotatedObject", "AnnotationEvents", "LabelsEdit", "PropagationRun", "Status"]
