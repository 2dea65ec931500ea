"""The current object: the prompt layers <-> its prompts in the annotation, candidates, modes.

A mixin of :class:`~napari_sam_stack._widget._widget.SamStackWidget`. The points and
boxes layers show the prompts of ONE object, the current one (``widget.obj_id``);
everything about it lives in ``widget.annotation.objects[obj_id]``. A change in the layers
is pushed into the annotation slice by slice: a worker makes sure the slice is encoded,
then ``Annotation.add_prompt`` runs the one decoder call on the main thread (so every
change of the annotation happens on the main thread; a fast series of clicks only ever
answers the newest prompt). Selecting another object loads its prompts into the layers.
"""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import QTimer

from ..errors import PromptError
from ._layers import NEGATIVE, POINT_COLORS, POSITIVE, layer_signature, prompts_to_layers, read_prompts, set_point_labels
from ._report import UserError, reported


def next_free_id(a) -> int:
    """The id ``a.new_object()`` would give now (never one of a committed, deleted or existing object)."""
    top = int(a.labels.max()) if a.labels.size else 0
    return max([top, int(getattr(a, "_top_id", 0)), *a.objects]) + 1


class ObjectActions:
    """Everything the user does to the current object (keys and buttons call these)."""

    def _reset_object_state(self) -> None:
        self._prompts: dict = {}  # slice -> SlicePrompt read from the prompt layers
        self._snapshot: dict = {}  # slice -> prompt signature the annotation has, to find the slices that changed
        self._epoch = getattr(self, "_epoch", 0) + 1  # a new object (or session): older runs' results are dropped
        a, o = self._annotation, self.obj_id
        if a is not None and o in a.objects:
            self._snapshot = {i: s for i, p in a.objects[o].prompts.items() if (s := layer_signature(p)) is not None}

    def _run_tag(self) -> tuple:
        """What a background result belongs to: the annotation, the object id and this object's epoch."""
        return (id(self._annotation), self.obj_id, self._epoch)

    @property
    def obj_id(self) -> int:
        """Id of the current object (it exists in the annotation once it has a prompt)."""
        return int(self.obj_spin.value())

    @property
    def current_object(self):
        """The current :class:`~napari_sam_stack.annotation.AnnotatedObject`, or None before its first prompt."""
        a = self._annotation
        return None if a is None else a.objects.get(self.obj_id)

    # ------------------------------------------------------------------ prompts -> annotation
    def _on_prompt_data(self, event=None) -> None:
        action = str(getattr(event, "action", "") or "")
        if action.endswith("ing") or getattr(self, "_loading_layers", False):
            return  # 'adding', 'changing', 'removing': wait for the result; or the widget fills the layers
        self._prompts_changed()

    @reported
    def _prompts_changed(self) -> None:
        if self.model is None or self.image_layer is None:
            return
        a = self._current_annotation(block=False)
        if a is None:
            return  # built in the background: these prompts are answered when it arrives
        prompts = read_prompts(self._view, self.points_layer, self.boxes_layer)
        sigs = {i: p.signature() for i, p in prompts.items()}
        changed = sorted(i for i in set(sigs) | set(self._snapshot) if sigs.get(i) != self._snapshot.get(i))
        self._prompts, self._snapshot = prompts, sigs
        for i in changed:
            if i in prompts:
                self._request_preview(a, i)
            else:
                self._prompt_removed(a, i)

    def _request_preview(self, a, i: int) -> None:
        session, tag = a.session, self._run_tag()

        def run():  # the encoder pass, when the slice is not cached yet; the decoder runs in _on_slice_ready
            session.embeddings.get(i)
            return tag

        if not session.embeddings.is_computed(i):
            self.set_status(f"slice {i}: encoding it first …")
        self._predictor.submit(i, run)

    @reported
    def _on_slice_ready(self, i: int, tag) -> None:
        p, a = self._prompts.get(i), self._annotation
        if p is None or a is None or tag != self._run_tag():
            return
        o = self._ensure_object(a)
        old = a.objects[o].prompts.get(i)
        mask = old.mask if old is not None and old.mask is not None and not old.mask_is_logits else None
        pred = a.add_prompt(o, i, points=p.points, point_labels=p.labels, box=p.box, mask=mask)
        self._on_prediction(i, pred)

    def _on_prediction(self, i: int, prediction) -> None:
        """A prompt on slice ``i`` was answered (the annotation stored its mask; the preview follows it)."""
        if prediction is not None:
            self._show_candidate(i, prediction, 0)

    def _ensure_object(self, a) -> int:
        """The current object, made in the annotation at its first prompt (an id its labels hold adopts those pixels)."""
        o = self.obj_id
        if o not in a.objects:
            a.new_object(obj_id=o)
        return o

    def _prompt_removed(self, a, i: int) -> None:
        o = self.obj_id
        obj = a.objects.get(o)
        if obj is None or i not in obj.prompts:
            return
        old = obj.prompts[i]
        if old.mask is not None and not old.mask_is_logits:  # a loaded label: its mask prompt stays
            if old.points is not None or old.box is not None:
                a.add_prompt(o, i, mask=old.mask)
            return
        a.remove_prompt(o, i)
        obj.masks.clear(i, i)  # the mask of that slice came from the prompt just removed
        self._refresh_objects([o])

    def _show_candidate(self, i: int, pred, k: int) -> None:
        n = len(pred.masks)
        more = f" (candidate {k + 1}/{n}, M cycles)" if n > 1 else ""
        self.set_status(f"slice {i}: predicted IoU {float(pred.scores[k]):.3f}{more}, {int(pred.masks[k].sum())} px")

    # ------------------------------------------------------------------ the layers show one object
    def _load_prompt_layers(self) -> None:
        """Fill the prompt layers with the current object's prompts (empty for a new object)."""
        obj, view = self.current_object, self._view
        if view is None or self.points_layer is None:
            return
        import pandas as pd

        data, labs, boxes = prompts_to_layers(view, {} if obj is None else obj.prompts)
        points, shapes = self.points_layer, self.boxes_layer
        old = np.asarray(points.data, float).reshape(-1, view.ndim)
        keep = ~view.on_view(old)  # points of other views (4D: other time points) stay
        old_labels = points.features["label"].astype(str).to_numpy()
        others = [d for d, t in zip(shapes.data, shapes.shape_type) if not view.on_view(np.asarray(d)[:1])[0]]
        self._loading_layers = True
        try:
            new = np.concatenate([old[keep], data])
            if new.shape != old.shape or not np.array_equal(new, old):
                points.selected_data = set()
                points.data = new
                points.features = pd.DataFrame({"label": pd.Categorical([*old_labels[keep], *labs],
                                                                        categories=[POSITIVE, NEGATIVE])})
            if boxes or len(others) != len(shapes.data):  # (napari's data setters cost: only when it changes)
                shapes.selected_data = set()
                shapes.data = others
                if boxes:
                    shapes.add_rectangles(boxes)
        finally:
            self._loading_layers = False
        set_point_labels(self.points_layer, self._polarity)
        self._show_mode()
        self._reset_object_state()
        self._prompts = read_prompts(view, self.points_layer, self.boxes_layer)

    # ------------------------------------------------------------------ keys
    @reported
    def toggle_polarity(self) -> None:
        """Switch between positive and negative clicks; in select mode, the selected points switch too."""
        self._polarity = NEGATIVE if self._polarity == POSITIVE else POSITIVE
        if self.points_layer is not None:
            layer = self.points_layer
            selected = sorted(layer.selected_data) if str(layer.mode) == "select" else []
            set_point_labels(layer, self._polarity, selected)
            if selected:
                self._prompts_changed()
        self._show_mode()

    def _show_mode(self) -> None:
        """The click mode, always visible: in the widget and as the points layer's current colour."""
        color = POINT_COLORS[self._polarity]
        self.mode_label.setText(f"<b><span style='color:{color}'>●</span> {self._polarity}</b> (N toggles)")
        layer = self.points_layer
        if layer is not None:
            if str(layer.mode) != "select":
                layer.selected_data = set()  # else the colour would repaint the last point
            layer.current_face_color = color

    @reported
    def box_mode(self) -> None:
        """Draw one rectangle in *SAM boxes*; then the points layer is active again, in add mode."""
        if self._box_mode:
            self._end_box_mode()
            return
        if self.model is not None and self.image_layer is not None:
            self._current_session(block=False)  # (re)makes prompt layers the user deleted
        if self.boxes_layer is None or self.boxes_layer not in self.viewer.layers:
            self.box_button.setChecked(False)
            raise UserError("open an image and load a model first")
        self._box_mode = True
        self.box_button.setChecked(True)
        self.viewer.layers.selection.active = self.boxes_layer
        self.boxes_layer.mode = "add_rectangle"
        self.set_status("box mode: drag a rectangle around the object")

    def _end_box_mode(self) -> None:
        self._box_mode = False
        self.box_button.setChecked(False)
        if self.points_layer is not None and self.points_layer in self.viewer.layers:
            self.viewer.layers.selection.active = self.points_layer
            self.points_layer.mode = "add"

    def _on_box_data(self, event=None) -> None:
        if self._box_mode and str(getattr(event, "action", "")) == "added":
            QTimer.singleShot(0, self._end_box_mode)  # after napari finished the drawing gesture

    @reported
    def cycle_candidate(self) -> None:
        """Choose the next of SAM's 3 candidate masks for a single click on this slice."""
        i = self.current_index() if self._view is not None else 0
        a, obj = self._annotation, self.current_object
        if obj is None or i not in obj.prompts:
            raise PromptError("no alternative masks on this slice: they exist for a single click (no box)")
        pred = a.predict(obj.id, i)
        if len(pred.masks) < 2:
            raise PromptError("no alternative masks on this slice: they exist for a single click (no box)")
        k = (obj.candidate.get(i, 0) + 1) % len(pred.masks)
        a.set_candidate(obj.id, i, k)
        self._show_candidate(i, pred, k)

    # ------------------------------------------------------------------ which object
    @reported
    def clear_object(self) -> None:
        """Forget the current object's prompts and masks (committed labels stay); stops its propagation."""
        self._cancel_task("propagate")
        if self.model is not None and self.image_layer is not None:
            self._current_session(block=False)  # (re)makes prompt layers the user deleted
        self._predictor.invalidate()
        a, obj = self._annotation, self.current_object
        if obj is not None:
            if obj.committed:
                a.remove_prompt(obj.id)  # its committed pixels, and the masks they came from, stay
            else:
                a.delete(obj.id)
        self._load_prompt_layers()
        self.set_status(f"object {self.obj_id}: cleared")

    @reported
    def next_object(self) -> None:
        """Start a new object with the next free id (the current one stays in the objects panel)."""
        self._cancel_task("propagate")
        self._predictor.invalidate()
        a = self._annotation
        self._set_current(next_free_id(a) if a is not None else self.obj_id + 1)
        self.set_status(f"object {self.obj_id}: click on it")

    @reported
    def select_object(self, obj_id: int, jump: bool = True) -> None:
        """Continue editing object ``obj_id``: its prompts come back on their slices and the viewer
        jumps to its first prompted slice (``jump``)."""
        from ..errors import AnnotationError

        a = self.annotation
        if int(obj_id) not in a.objects:
            raise AnnotationError(f"no object {obj_id} (objects: {', '.join(map(str, a.objects)) or 'none yet'})")
        obj = a.objects[int(obj_id)]
        self._set_current(obj.id)
        first = (obj.prompted() or obj.slices() or [None])[0]
        if jump and first is not None:
            self.show_slice(first)
        self.set_status(f"object {obj.id} ({obj.status}): prompts on slices {obj.prompted() or 'none'}")

    def _set_current(self, obj_id: int) -> None:
        """Make ``obj_id`` the current object: the layers show its prompts, the range is the whole stack."""
        previous = getattr(self, "_current_id", None)
        self._current_id = int(obj_id)
        self._setting_obj = True
        try:
            self.obj_spin.setValue(int(obj_id))
        finally:
            self._setting_obj = False
        self._cancel_task("propagate")
        self._predictor.invalidate()
        a = self._annotation
        if a is None or int(obj_id) not in a.objects:
            self._polarity = POSITIVE  # a new object starts with 'this is it' (not a negative left over)
        self._load_prompt_layers()
        self._reset_range()
        self._refresh_objects([o for o in (previous, self.obj_id) if o is not None])
        self.objects_panel.select(self.obj_id)

    def _on_obj_changed(self, *_) -> None:
        if not getattr(self, "_setting_obj", False):
            self._set_current(self.obj_id)  # typed in the spin box: that object (a new one when unknown)

    # ------------------------------------------------------------------ existing labels
    @reported
    def edit_label(self) -> None:
        """Make the labels layer's selected label the current object, to refine and re-commit."""
        a = self.annotation  # loading a label starts where the viewer is
        target = self.target_layer
        if target is None:
            raise PromptError("choose the labels layer that holds the label first")
        lab = int(target.selected_label)
        if lab == 0 or not (a.labels == lab).any():
            raise PromptError(f"label {lab} is not in {target.name!r}: select an existing label (picker or spin box)")
        i = self.current_index()
        if lab not in a.objects:
            a.new_object(obj_id=lab)  # adopts its pixels: committed, its masks are those pixels
        here = a.labels[i] == lab
        if here.any() and i not in a.objects[lab].prompts:
            a.add_prompt(lab, i, mask=here)  # clicks on this slice refine the loaded mask
        self.select_object(lab, jump=False)
        self.set_status(f"label {lab} loaded: click to refine it, propagate, then commit")
