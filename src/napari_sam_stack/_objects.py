"""The objects of an :class:`~napari_sam_stack.annotation.Annotation`, their statuses and events,
and one batched propagation run over some of them."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from psygnal import Signal, SignalGroup

from ._masks import MaskStack, confidence, winners
from .errors import AnnotationError
from .prompts import Prompt


class Status:
    """An object's status: ``draft`` (prompts, 2D masks), ``propagated``, ``committed``
    (its masks are the committed labels), ``edited`` (changed since its commit)."""

    DRAFT = "draft"
    PROPAGATED = "propagated"
    COMMITTED = "committed"
    EDITED = "edited"
    ALL = (DRAFT, PROPAGATED, COMMITTED, EDITED)


@dataclass(eq=False)
class AnnotatedObject:
    """One object of the annotation: its prompts per slice, chosen candidates, latest masks, status."""

    id: int
    masks: MaskStack
    prompts: dict[int, Prompt] = field(default_factory=dict)
    candidate: dict[int, int] = field(default_factory=dict)
    status: str = Status.DRAFT
    committed: bool = False  # its pixels are in the labels (as far as the last commit / sync_labels know)
    propagated: bool = False  # its masks come from a propagation made after its last prompt change
    version: int = 0  # bumps with every prompt change: a propagation started before one does not store
    conditioning: dict[int, Prompt] = field(default_factory=dict)
    """What propagation starts from per prompted slice (``a.session.prompts[id]`` is this dict): the
    prompt itself, or the mask chosen on that slice (a candidate other than the best, or clicks
    refining a mask prompt)."""

    def slices(self) -> list[int]:
        """Sorted slice indices where the object has a result mask."""
        return self.masks.slices()

    def prompted(self) -> list[int]:
        """Sorted slice indices where the object has a prompt."""
        return sorted(self.prompts)


class AnnotationEvents(SignalGroup):
    object_added = Signal(int)
    object_changed = Signal(int)
    object_removed = Signal(int)
    labels_changed = Signal(object)  # LabelsEdit
    status_changed = Signal(int, str)


class PropagationRun:
    """One batched propagation of some objects (see :meth:`Annotation.propagation`)."""

    def __init__(self, annotation, obj_ids: list[int], start: int, stop: int, frames):
        self.annotation = annotation
        self.obj_ids = list(obj_ids)
        self.start, self.stop = start, stop
        self.versions = {o: annotation.objects[o].version for o in obj_ids}
        shape = annotation.session.frames.frame_shape
        self.results = {o: MaskStack(shape) for o in obj_ids}
        self.finished = False
        self._frames = frames

    def __iter__(self):
        wanted = self.results
        shape = self.annotation.session.frames.frame_shape
        anchors = self.annotation.anchors(wanted)
        for index, logits in self._frames:
            for o, value in logits.items():
                if o in wanted:
                    wanted[o].set(index, confidence(value))
            yield index, winners(shape, index, wanted, anchors=anchors)[1]
        self.finished = True

    def apply(self) -> list[int]:
        """Store the results into the objects (those unchanged and not deleted since); their ids."""
        a = self.annotation
        if not self.finished:
            raise AnnotationError("this propagation has not finished: iterate it to the end first")
        done = []
        for o, stack in self.results.items():
            obj = a.objects.get(o)
            if obj is None or obj.version != self.versions[o]:
                continue
            same = obj.masks.same_masks(stack, self.start, self.stop)
            obj.masks.clear(self.start, self.stop)
            obj.masks.update(stack)
            obj.propagated = True
            if not obj.committed:
                a._set_status(obj, Status.PROPAGATED)
            elif not same:  # a committed object propagated again to the same masks stays committed
                a._set_status(obj, Status.EDITED)
            a.events.object_changed.emit(o)
            done.append(o)
        a._changed = a._changed or bool(done)
        return done


def carried_over(a, session):
    """:meth:`Annotation.with_session`: ``a``'s objects and labels over ``session``."""
    import copy

    from .session import Session

    if not isinstance(session, Session):
        raise AnnotationError(f"with_session needs a Session, got {type(session).__name__}")
    if session.shape != a.session.shape or session.frames.signature() != a.session.frames.signature():
        raise AnnotationError(f"with_session: the session views another image (shape {session.shape}, "
                              f"not {a.session.shape}) or the same one otherwise (axis, channels, contrast)")
    b = type(a).from_session(session, labels=a.labels, autosave=a.autosave, autosave_every=a.autosave_every)
    for o, obj in a.objects.items():
        b.objects[o] = copy.deepcopy(obj)
        b._attach(b.objects[o])
    b._deleted = copy.deepcopy(a._deleted)
    b._top_id = max(b._top_id, a._top_id)
    b.source, b.project_path = a.source, a.project_path
    return b


def predict_with_logits(session, prompt: Prompt, i: int):
    """(Prediction, its full-resolution logits (K, Y, X) minus the mask threshold) for ``prompt``
    on slice ``i``, best candidate first (SAM's advice on multimask)."""
    from .predict import Prediction, _threshold, predict_logits, use_multimask

    model = session.model
    full, scores, low = predict_logits(model, session.embeddings.get(i), prompt, use_multimask(prompt, None))
    order = np.argsort(-scores, kind="stable")
    full = full[order] - _threshold(model)
    return Prediction(full > 0, scores[order], low[order]), full


def conditioning_for(obj: AnnotatedObject, i: int) -> Prompt | None:
    """What propagation starts from on slice ``i`` (see :attr:`AnnotatedObject.conditioning`)."""
    prompt = obj.prompts.get(i)
    if prompt is None:
        return None
    if mask_only(prompt) or (obj.candidate.get(i, 0) == 0 and prompt.mask is None):
        return prompt
    chosen = obj.masks.mask(i)
    if chosen is not None:
        return Prompt(mask=chosen)
    if prompt.points is not None or prompt.box is not None:
        return Prompt(prompt.points, prompt.labels, prompt.box)
    return None


def mask_only(prompt: Prompt) -> bool:
    """A binary mask prompt without clicks or box."""
    return prompt.mask is not None and not prompt.mask_is_logits and prompt.points is None and prompt.box is None


def check_ids(obj_ids) -> list:
    """One id or an iterable of them, as a non-empty list (each still to be checked)."""
    if isinstance(obj_ids, (int, np.integer)) and not isinstance(obj_ids, bool):
        return [obj_ids]
    try:
        ids = list(obj_ids)
    except TypeError:
        raise AnnotationError(f"obj_ids must be an object id or a list of them, got {obj_ids!r}") from None
    if not ids:
        raise AnnotationError("obj_ids is empty: give object ids, or None for all")
    return ids
