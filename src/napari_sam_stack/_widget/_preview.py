"""The views that follow the annotation: the preview layer and the objects panel.

A mixin of :class:`~napari_sam_stack._widget._widget.SamStackWidget`. The preview shows
every object that is not committed (or was edited since), plus the current object, in
its label colour; it is repainted from the annotation, slice by slice, only where an
object's masks changed (each stored mask slice is a new crop object, so a changed slice
is found by identity, without comparing pixels).
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np

from ._layers import write_preview


class PreviewView:
    """Repaint the preview and the objects panel from the annotation's events."""

    def _annotation_switched(self) -> None:
        """A new annotation is shown: the current object is a new one, everything is repainted."""
        a = self._annotation
        self.objects_panel.set_annotation(a)
        if a is None:
            return
        if (getattr(self, "_keep_obj_id", False) and self.obj_id not in a.objects) or getattr(self, "_carry_obj_id", False):
            self._current_id = self.obj_id
        else:
            from ._object import next_free_id

            self._setting_obj = True
            try:
                self.obj_spin.setValue(next_free_id(a))
            finally:
                self._setting_obj = False
            self._current_id = self.obj_id
        self._reset_object_state()
        self._paint_all()
        self._offer_autosave()

    def _shown_ids(self) -> list[int]:
        a = self._annotation
        if a is None:
            return []
        return [o for o, obj in a.objects.items() if obj.status != "committed" or o == self.obj_id]

    def _paint_all(self) -> None:
        """Repaint every slice of the preview (a new annotation, a new preview layer)."""
        a, preview = self._annotation, self.preview_layer
        if a is None or preview is None or self._view is None:
            return
        self._shown = {}
        self._refresh_objects(list(a.objects), every_slice=True)

    def _refresh_objects(self, obj_ids, every_slice: bool = False) -> None:
        """Repaint the preview where the masks of ``obj_ids`` changed (or they were shown / hidden)."""
        a, preview, view = self._annotation, self.preview_layer, self._view
        if a is None or preview is None or view is None or preview not in self.viewer.layers:
            return
        shown = set(self._shown_ids())
        dirty: set[int] = set(range(len(view))) if every_slice else set()
        for o in obj_ids:
            obj = a.objects.get(o)
            now = {}
            if obj is not None and o in shown:
                now = {i: obj.masks.crop(i) for i in obj.masks.slices()}
            before = self._shown.get(o, {})
            dirty.update(i for i in set(now) | set(before) if now.get(i) is not before.get(i))
            if now:
                self._shown[o] = now
            else:
                self._shown.pop(o, None)
            self.objects_panel.update_object(o)
        if not dirty:
            return
        ids = [o for o in self._shown_ids() if o in a.objects]
        for i in sorted(dirty):
            labels = a.preview_labels(i, obj_ids=ids) if ids else None
            write_preview(preview, view, i, labels, refresh=False)
        preview.refresh()

    @contextmanager
    def _batched_views(self):
        """Within: annotation events only collect the objects they name; at the end, ONE repaint
        (commit all of 500 objects repaints each slice once, not once per object)."""
        outer = getattr(self, "_pending_ids", None) is not None
        if not outer:
            self._pending_ids = []
        try:
            yield
        finally:
            if not outer:
                ids, self._pending_ids = self._pending_ids, None
                if ids:
                    self._refresh_objects(list(dict.fromkeys(ids)))

    def _on_annotation_event(self, name: str, args: tuple) -> None:
        """An annotation event (main thread): the views catch up."""
        if not self._alive() or self._annotation is None:
            return
        if name in ("object_added", "object_changed", "object_removed", "status_changed", "labels_changed"):
            self._drop_autosave_offer()
        if name in ("object_added", "object_changed", "object_removed", "status_changed"):
            if getattr(self, "_pending_ids", None) is not None:
                self._pending_ids.append(args[0])
            else:
                self._refresh_objects([args[0]])
            if name == "object_removed" and args[0] == self.obj_id:
                self._reset_object_state()
        elif name == "labels_changed":
            self.objects_panel.update_summary()

    def _paint_run_slice(self, preview, view, index: int, labels: np.ndarray, ids) -> None:
        """Show a propagation's live result on one slice, over the other objects shown there."""
        sl = np.array(preview.data[view.slice_key(index)])
        sl[np.isin(sl, list(ids))] = 0
        new = (labels > 0) & (sl == 0)
        sl[new] = labels[new]
        write_preview(preview, view, index, sl)
