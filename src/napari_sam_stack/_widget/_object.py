"""The current object: prompts -> preview (one decoder call), candidates, propagation, commit.

A mixin of :class:`~napari_sam_stack._widget._widget.SamStackWidget`; the widget's
``session``, layers and task runner are used here.
"""

from __future__ import annotations

import numpy as np

from ..errors import Cancelled, ModelFamilyError, PromptError
from ._layers import (
    NEGATIVE,
    POINT_COLORS,
    POSITIVE,
    TARGET_NAME,
    commit_object,
    fits,
    make_labels_layer,
    next_free_id,
    read_prompts,
    set_point_labels,
    write_preview,
)
from qtpy.QtCore import QTimer

from ._report import UserError, reported
from ._workers import Failed


class ObjectActions:
    """Everything the user does to the current object (keys and buttons call these)."""

    def _reset_object_state(self) -> None:
        self._prompts: dict = {}  # slice -> SlicePrompt read from the prompt layers
        self._snapshot: dict = {}  # slice -> prompt signature, to find the slices that changed
        self._candidates: dict = {}  # slice -> Prediction of the last prompt there
        self._choice: dict = {}  # slice -> candidate the user cycled to
        self._mask_prompts: dict = {}  # slice -> bool mask (an existing label loaded for refinement)
        self._session_obj = None
        self._prompts_dirty = False
        self._epoch = getattr(self, "_epoch", 0) + 1  # a new object (or session): older runs' results are dropped

    def _run_tag(self) -> tuple:
        """What a background result belongs to: the session, the object id and this object's epoch."""
        return (id(self._session), self.obj_id, self._epoch)

    @property
    def obj_id(self) -> int:
        return int(self.obj_spin.value())

    # ------------------------------------------------------------------ prompts -> preview
    def _on_prompt_data(self, event=None) -> None:
        action = str(getattr(event, "action", "") or "")
        if action.endswith("ing"):  # 'adding', 'changing', 'removing': wait for the result
            return
        self._prompts_changed()

    @reported
    def _prompts_changed(self) -> None:
        if self.model is None or self.image_layer is None:
            return
        session = self._current_session(block=False)
        if session is None:
            return  # built in the background: these prompts are answered when it arrives
        view = self._view
        prompts = read_prompts(view, self.points_layer, self.boxes_layer)
        sigs = {i: p.signature() for i, p in prompts.items()}
        changed = sorted(i for i in set(sigs) | set(self._snapshot) if sigs.get(i) != self._snapshot.get(i))
        self._prompts, self._snapshot = prompts, sigs
        for i in changed:
            self._choice.pop(i, None)
            self._candidates.pop(i, None)
            if i in prompts:
                self._request_preview(session, i)
            else:
                write_preview(self.preview_layer, view, i, self._mask_prompts.get(i))
        self._sync_session_prompts()

    def _request_preview(self, session, i: int) -> None:
        p, mask = self._prompts[i], self._mask_prompts.get(i)

        def run():  # multimask=None: SAM's three candidates for a single click, one mask otherwise
            return session.predict(i, points=p.points, point_labels=p.labels, box=p.box, mask=mask)

        if not session.embeddings.is_computed(i):
            self.set_status(f"slice {i}: encoding it first …")
        self._predictor.submit(i, run)

    def _on_prediction(self, i: int, prediction) -> None:
        if self._view is None or i not in self._prompts:
            return
        self._candidates[i] = prediction
        write_preview(self.preview_layer, self._view, i, prediction.mask)
        self._show_candidate(i, prediction.best)
        self._sync_session_prompts()

    def _show_candidate(self, i: int, k: int) -> None:
        pred = self._candidates[i]
        n = len(pred.masks)
        more = f" (candidate {k + 1}/{n}, M cycles)" if n > 1 else ""
        self.set_status(f"slice {i}: predicted IoU {float(pred.scores[k]):.3f}{more}, {int(pred.masks[k].sum())} px")

    def _sync_session_prompts(self) -> None:
        """Mirror the layers' prompts of this object into ``session.prompts`` (what propagation uses)."""
        if self._task is not None and self._task_kind == "propagate":
            self._prompts_dirty = True
            return
        s, obj = self._session, self.obj_id
        if s is None:
            return
        if self._session_obj is not None:
            s.remove_prompt(self._session_obj)
        s.remove_prompt(obj)
        self._session_obj = obj
        for i in sorted(set(self._prompts) | set(self._mask_prompts)):
            p, mask = self._prompts.get(i), self._mask_prompts.get(i)
            chosen = self._chosen_mask(i)
            if chosen is not None:  # the candidate the user picked, or a refined loaded label
                s.add_prompt(obj, i, mask=chosen)
            elif p is not None:
                s.add_prompt(obj, i, points=p.points, point_labels=p.labels, box=p.box)
            elif mask is not None and mask.any():
                s.add_prompt(obj, i, mask=mask)
        self._prompts_dirty = False

    def _chosen_mask(self, i: int):
        pred = self._candidates.get(i)
        if pred is None:
            return None
        if i in self._choice:
            m = pred.masks[self._choice[i]]
        elif i in self._mask_prompts:
            m = pred.mask
        else:
            return None
        return m if m.any() else None

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

    # ------------------------------------------------------------------ undo
    @reported
    def undo_labels(self) -> None:
        """Undo the last commit / delete on the target labels layer, whichever layer is active."""
        self._labels_history("undo")

    @reported
    def redo_labels(self) -> None:
        self._labels_history("redo")

    def _labels_history(self, which: str) -> None:
        target = self.target_layer
        if target is None:
            raise UserError(f"nothing to {which}: no labels layer yet")
        if not getattr(target, f"_{which}_history", True):
            self.set_status(f"nothing to {which} on {target.name!r}")
            return
        getattr(target, which)()
        self._labels_restored(target)
        self.set_status(f"{which} on {target.name!r}")

    def _labels_restored(self, target) -> None:
        """After an undo / redo: views that follow the labels catch up."""

    @reported
    def cycle_candidate(self) -> None:
        """Show the next of SAM's 3 candidate masks for a single click on this slice."""
        i = self.current_index()
        pred = self._candidates.get(i)
        if pred is None or len(pred.masks) < 2:
            raise PromptError("no alternative masks on this slice: they exist for a single click (no box)")
        k = (self._choice.get(i, pred.best) + 1) % len(pred.masks)
        self._choice[i] = k
        write_preview(self.preview_layer, self._view, i, pred.masks[k])
        self._show_candidate(i, k)
        self._sync_session_prompts()

    @reported
    def clear_object(self) -> None:
        """Forget the current object's prompts and preview (committed labels stay); stops its propagation."""
        self._cancel_task("propagate")
        if self.model is not None and self.image_layer is not None:
            self._current_session(block=False)  # (re)makes prompt layers the user deleted
        self._predictor.invalidate()
        for layer in (self.points_layer, self.boxes_layer):
            if layer is not None and len(layer.data):
                layer.events.data.disconnect(self._on_prompt_data)
                try:
                    layer.data = np.empty((0, layer.ndim)) if layer is self.points_layer else []
                finally:
                    layer.events.data.connect(self._on_prompt_data)
        if self.preview_layer is not None:
            self.preview_layer.data[...] = 0
            self.preview_layer.refresh()
        if self._session is not None:
            for o in {self.obj_id, self._session_obj} - {None}:
                self._session.remove_prompt(o)
        self._reset_object_state()
        self.set_status(f"object {self.obj_id}: cleared")

    @reported
    def next_object(self) -> None:
        """Start a new object with the next free id of the labels layer."""
        self.clear_object()
        target = self.target_layer
        self.obj_spin.setValue(next_free_id(target) if target is not None else self.obj_id + 1)
        self._reset_range()
        self.set_status(f"object {self.obj_id}: click on it")

    def _on_obj_changed(self, *_) -> None:
        self._cancel_task("propagate")  # its results belong to the previous id
        self._sync_session_prompts()

    # ------------------------------------------------------------------ propagation
    @reported
    def propagate(self) -> None:
        """Propagate the current object over the slice range, in the background.

        Results reach the preview only while the same session and object are current:
        clearing the object, the next object or a new session cancel the run, and its
        late results are dropped.
        """
        s = self.object_session
        if s.model.family != "sam2":
            raise ModelFamilyError("propagation needs a SAM 2 model (e.g. 'sam2.1_hiera_tiny'): SAM 1 segments one slice at a time")
        if len(s) < 2:
            raise PromptError("a single 2D image has nothing to propagate to")
        self._sync_session_prompts()
        obj = self.obj_id
        if obj not in s.prompts:
            raise PromptError("nothing to propagate: click on the object (or draw a box) first")
        start, stop = self.start_spin.value(), self.stop_spin.value()
        tag, view, preview = self._run_tag(), self._view, self.preview_layer
        reached: set[int] = set()
        task = None
        frames = s.iter_propagate(cancel=lambda: task is not None and task.is_cancelled(), start=start, stop=stop,
                                  obj_ids=[obj])

        def run(_task):
            for index, logits in frames:
                yield index, logits.get(obj)

        def current() -> bool:
            return self._task is task and self._run_tag() == tag

        def on_yield(item):
            if not current():
                return  # a late result of a run for another object or session
            index, logits = item
            reached.add(index)
            write_preview(preview, view, index, None if logits is None else np.asarray(logits) > 0)
            task.set_progress(len(reached))

        def on_done(result, cancelled):
            if cancelled or isinstance(result, Failed) and isinstance(result.error, Cancelled):
                self.set_status(f"propagation of object {obj} cancelled after {len(reached)} slice(s): labels layer untouched")
            elif isinstance(result, Failed):
                self.report(result.error)
            elif self._run_tag() == tag:
                for i in set(range(start, stop + 1)) - reached:
                    write_preview(preview, view, i, None)
                self.set_status(f"propagated over {len(reached)} slice(s) ({start}..{stop}): check, fix, commit (Shift-C)")
            if self._prompts_dirty:
                self._sync_session_prompts()

        self.set_status(f"propagating slices {start}..{stop} …")
        task = self._start_task("propagate", run, desc="Propagating", total=stop - start + 1, generator=True,
                                on_yield=on_yield, on_done=on_done)

    # ------------------------------------------------------------------ labels
    def _target(self, create: bool):
        target = self.target_layer
        if target is None and create:
            target = make_labels_layer(self.viewer, self._view, TARGET_NAME, np.uint32)
            self._keep_obj_id = True  # the id chosen for this object stays
            try:
                self.target_layer = target
            finally:
                self._keep_obj_id = False
            layers = self.viewer.layers
            for layer in (self.preview_layer, self.boxes_layer, self.points_layer):  # prompts stay on top
                if layer in layers:
                    layers.move(layers.index(layer), len(layers))
            if self.points_layer in layers:  # keep clicking prompts, not painting labels
                layers.selection.active = self.points_layer
        if target is not None and not fits(target, self._view):
            raise PromptError(
                f"labels layer {target.name!r} has shape {tuple(target.data.shape)} but the image's labels need "
                f"{self._view.label_shape}: choose another labels layer (or 'new layer')"
            )
        return target

    @reported
    def commit(self) -> None:
        """Write the previewed object into the labels layer (one undo step), then start the next object."""
        if self._task is not None and self._task_kind == "propagate":
            raise PromptError("propagation is running: wait for it or press Cancel before committing")
        _ = self.object_session
        obj = np.asarray(self.preview_layer.data[self._view.region_key()]) != 0
        if not obj.any():
            raise PromptError("nothing to commit: the preview of this object is empty")
        target = self._target(create=True)
        n = commit_object(target, self._view, obj, self.obj_id, overwrite=self.overwrite_check.isChecked())
        done = self.obj_id
        self.next_object()
        self.set_status(f"object {done} committed to {target.name!r} ({n} pixels changed; Ctrl+Z or Undo undoes it)")

    @reported
    def edit_label(self) -> None:
        """Load the labels layer's selected label as the current object, to refine and re-commit."""
        _ = self.session  # loading a label starts a new object where the viewer is
        target = self._target(create=False)
        if target is None:
            raise PromptError("choose the labels layer that holds the label first")
        lab = int(target.selected_label)
        obj = np.asarray(target.data[self._view.region_key()]) == lab
        if lab == 0 or not obj.any():
            raise PromptError(f"label {lab} is not in {target.name!r}: select an existing label (picker or spin box)")
        self.clear_object()
        self.obj_spin.setValue(lab)
        self.preview_layer.data[self._view.region_key()] = obj
        self.preview_layer.refresh()
        i = self.current_index()
        slice_mask = obj[i] if self._view.axis is not None else obj
        if slice_mask.any():
            self._mask_prompts[i] = slice_mask
        self._sync_session_prompts()
        self.set_status(f"label {lab} loaded: click to refine it, propagate, then commit")
