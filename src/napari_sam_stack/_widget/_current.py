"""The session, the annotation and the prompt/preview layers for the view the widget shows.

A mixin of :class:`~napari_sam_stack._widget._widget.SamStackWidget`. A new view
(layer, axis, channel, contrast, model, or the fixed index of another axis) gets fresh
layers at once and its :class:`~napari_sam_stack.Session` is built in a worker thread:
building one reads slices (contrast percentiles, the cache signature), which for a big
dask/zarr stack must not freeze the window. The prompts are answered when it arrives.

Each (view, model, labels layer) has one :class:`~napari_sam_stack.Annotation`, kept
while the widget lives (switching back finds its objects again). Its ``labels`` are the
labels layer's data (a view of it for 4D data): commits and deletes are written into the
layer with ``data_setitem`` in ``block_history`` (one Ctrl+Z each). Without a labels
layer yet, the labels are a new array that becomes the *SAM labels* layer on the first commit.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import replace

import numpy as np
from qtpy.QtCore import QObject, Signal

from ._compat import guard_llvm_clash
from ._keys import bind_keys
from ._layers import fits, make_boxes_layer, make_points_layer, make_preview_layer, set_point_labels
from ._report import UserError
from ._view import SliceView, make_view
from ._workers import Failed, guarded


class _Relay(QObject):
    """Annotation events -> the main thread (queued when emitted from a worker thread)."""

    fired = Signal(str, tuple)

    def __call__(self, info) -> None:
        self.fired.emit(info.signal.name, tuple(info.args))


def layer_key(layer):
    return None if layer is None else getattr(layer, "unique_id", id(layer))


class CurrentView:
    """Which session, annotation and layers belong to the view now chosen."""

    def _init_current(self) -> None:
        self._session = None
        self._session_key = None
        self._building_key = None  # the view whose session a worker is building
        self._builders: set = set()
        self._building: Future | None = None  # the session of _building_key, for a task to wait on
        self._view: SliceView | None = None
        self.points_layer = self.boxes_layer = self.preview_layer = None
        self._layers_image = None  # the image layer the prompt layers were made for
        self._annotation = None
        self._annotations: dict = {}  # (session key, labels layer key) -> Annotation
        self._latest_work: dict = {}  # view key -> the annotation used last on it, under any model
        self._new_labels: dict = {}  # id(annotation) -> full labels array for a labels layer not made yet
        self._target_of: dict = {}  # id(annotation) -> the labels layer its labels are (None: not made yet)
        self._target_of_image: dict = {}  # image layer key -> the labels layer chosen when it was left
        self._relay = _Relay()
        self._relay.fired.connect(self._on_annotation_event)

    def current_view(self) -> SliceView:
        layer = self.image_layer
        if layer is None:
            raise UserError("no image layer: open an image first")
        contrast = "layer" if self.contrast_combo.currentIndex() == 1 else "auto"
        return make_view(layer, self.axis_combo.currentData(), self.viewer.dims.point,
                         channel=self.channel_combo.currentData(), contrast=contrast)

    @property
    def session(self):
        """The :class:`~napari_sam_stack.Session` for the chosen layer, axis and model (``annotation.session``).

        Rebuilt (embeddings start afresh) when the layer, axis, channel, contrast, model,
        or, for 4D data, the fixed index of the other axis changes. The widget builds it in
        the background; asking for it here returns it at once, waiting for that build or
        building it if needed (console, scripts, actions).
        """
        return self._current_session(block=True)

    @property
    def annotation(self):
        """The :class:`~napari_sam_stack.Annotation` the widget shows: every object, its prompts and
        status, the committed labels (``annotation.labels`` is the labels layer's data).
        Scripts in the console drive the same object; the widget follows its events."""
        self._current_session(block=True)
        return self._annotation

    @property
    def object_session(self):
        """The session the current object was made in (see ``keep_fixed``)."""
        return self._current_session(block=True, keep_fixed=True)

    def _current_session(self, block: bool, keep_fixed: bool = False):
        """The session of the current view; with ``block=False``, ``None`` while it is built.

        ``keep_fixed`` (actions on the current object): moving along a fixed axis of 4D data
        does not switch the view; the object stays in the view it was made in.
        """
        guard_llvm_clash()  # before any lazy torchvision/torch._dynamo import in a worker
        view = self.current_view()
        old = self._view
        if keep_fixed and old is not None and old.fixed != view.fixed and replace(old, fixed=view.fixed).key() == view.key():
            view = old
        if self.model is None:
            raise UserError("no model: load one first (Model → Load model)")
        key = (view.key(), id(self.model))
        if self._session is not None and key == self._session_key:
            if any(lay not in self.viewer.layers for lay in (self.points_layer, self.boxes_layer, self.preview_layer)):
                self._ensure_layers(view, clear_preview=False)  # the user deleted one: bring it back
                self._paint_all()
            return self._session
        if key != self._building_key:
            self._switch_view(view, key)
            if not block:
                self._build_in_background(view, key)
        if not block:
            return None
        from ..session import Session

        pending = self._building  # a worker is making it: wait for that one (the one tasks use)
        self._session = pending.result() if pending is not None else Session(view.data, self.model, **view.session_kwargs())
        self._session_key, self._building_key = key, None
        self._bind_annotation()
        return self._session

    def _current_annotation(self, block: bool):
        return self._annotation if self._current_session(block=block) is not None else None

    def _switch_view(self, view: SliceView, key) -> None:
        """Forget the old session's work in flight; layers that fit the new view."""
        self._cancel_task("propagate", "propagate all", "embeddings")  # they work on the old session
        self._predictor.invalidate()
        old = self._view
        new_image = old is None or old.layer is not view.layer
        if new_image and old is not None:
            self._target_of_image[layer_key(old.layer)] = self.target_layer
        self._session = self._session_key = self._building = None
        self._building_key, self._view = key, view
        self._set_annotation(None)
        self._reset_object_state()
        self._ensure_layers(view)
        if new_image:
            target = self.target_layer
            before = self._target_of_image.get(layer_key(view.layer))
            if before is not None and before is not target and before in self.viewer.layers and fits(before, view):
                # back to an image: its labels layer again, so its annotation (objects, ids) is found again
                self._keep_obj_id = True
                try:
                    self.target_layer = before
                finally:
                    self._keep_obj_id = False
                self._follow_target(before)
            elif target is not None and not fits(target, view):  # made for another image: commit to a new layer
                self.target_combo.setCurrentIndex(0)

    def _build_in_background(self, view: SliceView, key) -> None:
        from napari.qt.threading import create_worker

        from ..session import Session

        data, model, kw = view.data, self.model, view.session_kwargs()
        future = self._building = Future()

        def build():
            try:
                future.set_result(Session(data, model, **kw))
            except Exception as e:
                future.set_exception(e)
            return future.result()

        worker = create_worker(guarded(build), _start_thread=False)
        worker.returned.connect(lambda result: self._session_built(key, result))
        worker.finished.connect(lambda: self._builders.discard(worker))
        self._builders.add(worker)
        self.set_status("preparing the image …")
        worker.start()

    def _session_built(self, key, result) -> None:
        if not self._alive():
            return
        if key != self._session_key:  # else it was built at once meanwhile (an action, the console): use that one
            if key != self._building_key:
                return  # the view changed again meanwhile
            self._building_key = None
            if isinstance(result, Failed):
                self.report(result.error)
                return
            self._session, self._session_key = result, key
            try:
                self._bind_annotation()
            except Exception as e:
                self.report(e)
                return
            self.set_status("ready: click on the object (Points layer 'SAM points')")
        self._prompts_changed()  # answer the prompts already there

    # ------------------------------------------------------------------ the annotation
    def _bind_annotation(self) -> None:
        """The annotation of the session and the chosen labels layer (made once, then kept)."""
        from ..annotation import Annotation

        target, view = self.target_layer, self._view
        if target is not None and not fits(target, view):  # the image changed shape: commits go to a new layer
            self.target_combo.blockSignals(True)
            self.target_combo.setCurrentIndex(0)
            self.target_combo.blockSignals(False)
            target = None
        key = (self._session_key, layer_key(target))
        a = self._annotations.get(key)
        work = self._session_key[0]  # this image's view, whatever the model
        latest = self._latest_work.get(work)
        carried = (latest is not None and latest is not a and latest.objects and latest.session is not self._session
                   and self._target_of.get(id(latest)) is target)  # the same labels layer (or none made yet)
        if carried:  # another model now (e.g. the one just trained): the objects go on with it
            a = latest.with_session(self._session)  # (same view key: same image and view, it cannot refuse)
            self._annotations[key] = a
            self._target_of[id(a)] = target
            if id(latest) in self._new_labels:
                self._new_labels[id(a)] = self._new_labels[id(latest)]
        elif a is None:
            if target is not None:
                data = target.data
                if not isinstance(data, np.ndarray) or not data.flags.writeable or data.dtype.kind not in "ui":
                    self.target_combo.setCurrentIndex(0)
                    raise UserError(f"labels layer {target.name!r} is not an in-memory integer array: "
                                    "commits go to a new layer")
                region, full = data[view.region_key()], None
            else:
                full = np.zeros(view.label_shape, np.uint32)
                region = full[view.region_key()]
            a = Annotation.from_session(self._session, labels=region)
            a.source = _source_path(view.layer)
            self._annotations[key] = a
            self._target_of[id(a)] = target
            if full is not None:
                self._new_labels[id(a)] = full
        a.labels_writer = lambda edit, a=a, view=view: self._write_labels(a, view, edit)
        self._latest_work[work] = a
        self._carry_obj_id = bool(carried)  # the current object exists in the carried work: it stays current
        try:
            self._set_annotation(a)
        finally:
            self._carry_obj_id = False

    def _set_annotation(self, a) -> None:
        old = self._annotation
        if old is a:
            return
        if old is not None:
            old.events.all.disconnect(self._relay)
        self._annotation = a
        if a is not None:
            a.events.all.connect(self._relay)
        self._annotation_switched()

    def _alive(self) -> bool:
        """False once the widget is closed or its Qt object deleted (a worker may finish after that)."""
        try:
            return not self._closed and self.objectName() is not None
        except RuntimeError:
            return False

    @property
    def view(self) -> SliceView | None:
        return self._view

    def current_index(self) -> int:
        """Session slice index the viewer shows."""
        return self._view.index_at(self.viewer.dims.point)

    def show_slice(self, index: int) -> None:
        """Move the viewer to session slice ``index`` (the view's slice axis, in world coordinates)."""
        view = self._view
        if view is None or view.axis is None:
            return
        layer = view.layer
        pos = np.asarray(layer.world_to_data(self.viewer.dims.point), float)
        pos[view.axis] = index
        world = np.asarray(layer.data_to_world(pos), float)
        world_axis = self.viewer.dims.ndim - layer.ndim + view.axis
        self.viewer.dims.set_point(world_axis, float(world[view.axis]))

    def _ensure_layers(self, view: SliceView, clear_preview: bool = True) -> None:
        """Prompt and preview layers matching the view; those made for another image are replaced."""
        layers = self.viewer.layers
        fresh = False
        same_image = self._layers_image is view.layer
        for name in ("points_layer", "boxes_layer", "preview_layer"):
            old = getattr(self, name)
            if old in layers and not (same_image and fits(old, view, geometry=True, grid=name == "preview_layer")):
                layers.remove(old)
        self._layers_image = view.layer
        if self.points_layer not in layers:
            self.points_layer = make_points_layer(self.viewer, view)
            self.points_layer.events.data.connect(self._on_prompt_data)
            self.points_layer.events.features.connect(self._on_prompt_data)
            set_point_labels(self.points_layer, self._polarity)
            self._show_mode()
            bind_keys(self, self.points_layer)
            fresh = True
        if self.boxes_layer not in layers:
            self.boxes_layer = make_boxes_layer(self.viewer, view)
            self.boxes_layer.events.data.connect(self._on_prompt_data)
            self.boxes_layer.events.data.connect(self._on_box_data)
            bind_keys(self, self.boxes_layer)
            fresh = True
        if self.preview_layer not in layers:
            self.preview_layer = make_preview_layer(self.viewer, view)
            bind_keys(self, self.preview_layer)
            self._shown = {}
        elif clear_preview:
            self.preview_layer.data[...] = 0
            self.preview_layer.refresh()
            self._shown = {}
        if fresh:
            self.viewer.layers.selection.active = self.points_layer
        self._refresh_layer_choices()


def _source_path(layer) -> str | None:
    """The file an image layer was read from, when napari knows it."""
    from ..project import is_project

    path = getattr(getattr(layer, "source", None), "path", None)
    return None if path is None or is_project(path) else str(path)
