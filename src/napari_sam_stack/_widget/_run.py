"""Propagate, commit, delete, undo: what the widget does to the annotation's objects and labels.

A mixin of :class:`~napari_sam_stack._widget._widget.SamStackWidget`. Propagation runs
in a worker (``Annotation.propagation``: one batched run of one or all objects); its
slices show in the preview as they finish; the masks are stored on the main thread at
the end (a cancelled run stores nothing). Commits and deletes reach the labels layer
through ``annotation.labels_writer`` -> ``data_setitem`` in ``block_history``: one undo
step each; after an undo/redo ``annotation.sync_labels()`` re-derives the statuses.
"""

from __future__ import annotations

import warnings

from ..errors import AnnotationError, Cancelled, ModelFamilyError, PromptError
from ._current import layer_key
from ._keys import bind_keys
from ._layers import TARGET_NAME, make_labels_layer, write_labels
from ._report import UserError, reported
from ._workers import Failed


class RunActions:
    """Propagation, commits, deletes and undo."""

    # ------------------------------------------------------------------ propagation
    @reported
    def propagate(self) -> None:
        """Propagate the current object over the slice range, in the background.

        Results reach the preview only while the same annotation and object are current:
        clearing the object, the next object or a new session cancel the run, and its
        late results are dropped.
        """
        self._check_propagation()
        obj = self.current_object
        if obj is None or not obj.prompts:
            raise PromptError("nothing to propagate: click on the object (or draw a box) first")
        self._propagate([obj.id], "propagate")

    @reported
    def propagate_all(self) -> None:
        """Propagate every object with prompts in ONE batched run (progress bar, Cancel)."""
        self._check_propagation()
        a = self._annotation
        if not any(obj.prompts for obj in a.objects.values()):
            raise PromptError("nothing to propagate: no object has a prompt yet")
        self._propagate(None, "propagate all")

    def _check_propagation(self) -> None:
        s = self.object_session
        if s.model.family != "sam2":
            raise ModelFamilyError("propagation needs a SAM 2 model (e.g. 'sam2.1_hiera_tiny'): SAM 1 segments one slice at a time")
        if len(s) < 2:
            raise PromptError("a single 2D image has nothing to propagate to")

    def _propagate(self, obj_ids, kind: str) -> None:
        if self._task is not None:
            raise UserError(f"{self._task_kind} is running: wait for it or press Cancel")
        a, view, preview = self._annotation, self._view, self.preview_layer
        start, stop = self.start_spin.value(), self.stop_spin.value()
        max_absent = self.absent_spin.value() or None
        single = obj_ids is not None
        tag = self._run_tag() if single else (id(a),)
        task = None
        run = a.propagation(obj_ids, cancel=lambda: task is not None and task.is_cancelled(), start=start, stop=stop,
                            max_absent=max_absent)
        reached: set[int] = set()
        what = f"object {obj_ids[0]}" if single else f"{len(run.obj_ids)} objects"

        def work(_task):
            yield from run

        def current() -> bool:
            now = self._run_tag() if single else (id(self._annotation),)
            return self._task is task and now == tag

        def on_yield(item):
            if not current():
                return  # a late result of a run for another object or annotation
            index, labels = item
            reached.add(index)
            self._paint_run_slice(preview, view, index, labels, run.obj_ids)
            task.set_progress(len(reached))

        def on_done(result, cancelled):
            if cancelled or isinstance(result, Failed) and isinstance(result.error, Cancelled):
                self.set_status(f"propagation of {what} cancelled after {len(reached)} slice(s): nothing stored, "
                                "labels layer untouched")
                if self._annotation is a:
                    self._refresh_objects(run.obj_ids, every_slice=True)  # the live preview goes back
            elif isinstance(result, Failed):
                self.report(result.error)
            elif self._annotation is a:
                with self._batched_views():
                    done = run.apply()
                late = sorted(set(run.obj_ids) - set(done))
                note = f"; not stored for {late}: their prompts changed meanwhile (propagate again)" if late else ""
                self.set_status(f"{what} propagated over {len(reached)} slice(s) ({start}..{stop}): check, fix, "
                                f"commit{note}")

        self.set_status(f"propagating {what} over slices {start}..{stop} …")
        task = self._start_task(kind, work, desc=f"Propagating {what}", total=stop - start + 1, generator=True,
                                on_yield=on_yield, on_done=on_done)

    # ------------------------------------------------------------------ commit / delete
    def _no_propagation_running(self, what: str) -> None:
        if self._task is not None and self._task_kind in ("propagate", "propagate all"):
            raise PromptError(f"propagation is running: wait for it or press Cancel before {what}")

    @reported
    def commit(self) -> None:
        """Write the current object into the labels layer (one undo step), then start the next object."""
        self._no_propagation_running("committing")
        _ = self.object_session
        a, obj = self._annotation, self.current_object
        if obj is None or not len(obj.masks):
            raise PromptError("nothing to commit: the preview of this object is empty")
        edit = self._commit(a, [obj.id])
        done = obj.id
        self.next_object()
        self.set_status(f"object {done} committed to {self.target_layer.name!r} ({len(edit)} pixels changed; "
                        "Ctrl+Z or Undo undoes it)")

    @reported
    def commit_all(self) -> None:
        """Commit every object not committed yet (or edited since), as ONE undo step."""
        self._no_propagation_running("committing")
        a = self.annotation
        edit = self._commit(a, None)
        self.next_object()
        ids = ", ".join(map(str, edit.obj_ids))
        self.set_status(f"committed objects {ids} ({len(edit)} pixels changed; Ctrl+Z or Undo undoes it)")

    def _commit(self, a, ids):
        with warnings.catch_warnings(record=True) as caught, self._batched_views():
            warnings.simplefilter("always")
            edit = a.commit(ids, overwrite=self.overwrite_check.isChecked())
        for w in caught:
            from napari.utils.notifications import show_warning

            show_warning(str(w.message))
        return edit

    @reported
    def delete_object(self, obj_id: int | None = None) -> None:
        """Delete an object (default: the current one) and its committed pixels; Ctrl+Z / Undo brings it back."""
        self._no_propagation_running("deleting")
        a = self.annotation
        o = self.obj_id if obj_id is None else int(obj_id)
        if o not in a.objects:
            raise AnnotationError(f"no object {o} to delete")
        with self._batched_views():
            edit = a.delete(o)
        if o == self.obj_id:
            self.next_object()
        self.set_status(f"object {o} deleted ({len(edit)} pixels cleared; Ctrl+Z or Undo brings it back)")

    # ------------------------------------------------------------------ the labels layer
    def _write_labels(self, a, view, edit) -> None:
        """``annotation.labels_writer``: the edit goes into the labels layer as ONE undo step."""
        target = self._labels_layer_of(a, view, create=len(edit) > 0)
        if target is not None:
            write_labels(target, view, edit)

    def _labels_layer_of(self, a, view, create: bool):
        """The labels layer whose data ``a.labels`` is; made from it on the first commit ('new layer')."""
        full = self._new_labels.get(id(a))
        if full is None:
            return self._target_of.get(id(a))
        if not create:
            return None
        target = make_labels_layer(self.viewer, view, TARGET_NAME, data=full)
        del self._new_labels[id(a)]
        self._target_of[id(a)] = target
        for key, value in list(self._annotations.items()):
            if value is a:
                del self._annotations[key]
                self._annotations[(key[0], layer_key(target))] = a
        self._keep_obj_id = True  # the annotation and the id chosen for this object stay
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
        return target

    def _follow_target(self, target) -> None:
        """Undo / redo keys on the labels layer itself go through the widget (so the annotation follows)."""
        if target is not None and layer_key(target) not in self._keyed_targets:
            self._keyed_targets[layer_key(target)] = target
            bind_keys(self, target, methods=("undo_labels", "redo_labels"))
            target.events.paint.connect(self._on_paint)

    def _on_paint(self, event=None) -> None:
        self._sync_timer.start()  # a brush stroke: the statuses follow once it ends

    def _sync_labels(self) -> None:
        a = self._annotation
        if a is not None and self._alive():
            with self._batched_views():
                a.sync_labels()
            self._refresh_objects(list(a.objects))

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
        self._no_propagation_running(f"{which}ing")
        if not getattr(target, f"_{which}_history", True):
            self.set_status(f"nothing to {which} on {target.name!r}")
            return
        getattr(target, which)()
        self._sync_labels()
        self.set_status(f"{which} on {target.name!r}")
