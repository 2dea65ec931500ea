"""The dock widget: a thin view over a :class:`napari_sam_stack.Session`.

Choose image layer / slice axis / channel, load a model, compute embeddings in the
background, then click. ``widget.session`` is the same object the console can script.
"""

from __future__ import annotations

from qtpy.QtCore import QEvent, QTimer

from ..errors import Cancelled
from ..models import available_models
from ._compat import guard_llvm_clash
from ._controls import LOCAL, Controls
from ._current import CurrentView
from ._keys import bind_keys, unbind_keys
from ._layers import POSITIVE, next_free_id, role
from ._object import ObjectActions
from ._report import UserError, explain_download, notify, reported, reporting, short_message
from ._view import axis_names, default_axis, nonspatial_axes
from ._workers import Failed, LatestOnly, Task

DEFAULT_MODEL = "sam2.1_hiera_tiny"
LOADED = "loaded"  # item data of the model box's entry for a model loaded from elsewhere (console, --test-model)


class SamStackWidget(CurrentView, ObjectActions, Controls):
    """Segment Anything on stacks: click, preview, propagate, commit."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        guard_llvm_clash()
        self.viewer = napari_viewer
        self._closed = False
        self.model = None
        self._init_current()
        self._task: Task | None = None
        self._task_kind = ""
        self._predictor = LatestOnly(self._on_prediction, self.report)
        self._reset_object_state()
        self._polarity = POSITIVE
        self._box_mode = False
        self._image_layers: list = []
        self._contrast_source = None  # the image layer whose contrast_limits events we follow
        self._contrast_timer = QTimer(self, singleShot=True, interval=300)  # a slider drag: one rebuild at the end
        self._contrast_timer.timeout.connect(self._on_contrast_limits)
        self._contrast_changed = lambda *_: self._contrast_timer.start()
        self._label_layers: list = []

        self.model_combo.addItems([*available_models(), LOCAL])
        self.model_combo.setCurrentText(DEFAULT_MODEL)  # SAM 2: it can propagate
        self.model_combo.currentTextChanged.connect(lambda t: self.show_local_fields(t == LOCAL))
        self.show_local_fields(False)
        self.image_combo.currentIndexChanged.connect(self._on_image_changed)
        self.axis_combo.currentIndexChanged.connect(self._on_view_changed)
        self.channel_combo.currentIndexChanged.connect(self._on_view_changed)
        self.contrast_combo.currentIndexChanged.connect(self._on_view_changed)
        self.load_button.clicked.connect(lambda *_: self.load_model())
        self.embed_button.clicked.connect(lambda *_: self.compute_embeddings())
        self.cancel_button.clicked.connect(lambda *_: self.cancel())
        self.propagate_button.clicked.connect(lambda *_: self.propagate())
        self.commit_button.clicked.connect(lambda *_: self.commit())
        self.clear_button.clicked.connect(lambda *_: self.clear_object())
        self.next_button.clicked.connect(lambda *_: self.next_object())
        self.edit_button.clicked.connect(lambda *_: self.edit_label())
        self.box_button.clicked.connect(lambda *_: self.box_mode())
        self.undo_button.clicked.connect(lambda *_: self.undo_labels())
        self.redo_button.clicked.connect(lambda *_: self.redo_labels())
        self.obj_spin.valueChanged.connect(self._on_obj_changed)
        self.target_combo.currentIndexChanged.connect(self._on_target_changed)

        ev = self.viewer.layers.events
        for e in (ev.inserted, ev.removed, ev.reordered):
            e.connect(self._refresh_layer_choices)
        bind_keys(self, self.viewer)
        self._show_mode()
        self._refresh_layer_choices()

    # ------------------------------------------------------------------ reporting
    def report(self, error: BaseException) -> None:
        """Show an error as a napari notification (all of it) and in the status line (one short line)."""
        notify(error)
        self.set_status(short_message(error))

    def set_status(self, text: str) -> None:
        """One line in the widget (elided to its width; the whole text is the tooltip)."""
        self.status_label.setText(text)
        self.status_label.setToolTip(text)

    # ------------------------------------------------------------------ layer choices
    def _refresh_layer_choices(self, event=None) -> None:
        from napari.layers import Image, Labels

        current = self.image_layer
        self._image_layers = [lay for lay in self.viewer.layers if isinstance(lay, Image)]
        if current is not None and current not in self._image_layers:  # the image is gone: so is the work on it
            self._cancel_task("propagate", "embeddings")
            self._predictor.invalidate()
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        self.image_combo.addItems([lay.name for lay in self._image_layers])
        if current in self._image_layers:
            self.image_combo.setCurrentIndex(self._image_layers.index(current))
        self.image_combo.blockSignals(False)

        target = self.target_layer
        self._label_layers = [lay for lay in self.viewer.layers if isinstance(lay, Labels) and role(lay) is None]
        self.target_combo.blockSignals(True)
        self.target_combo.clear()
        self.target_combo.addItems(["new layer", *[lay.name for lay in self._label_layers]])
        if target in self._label_layers:
            self.target_combo.setCurrentIndex(1 + self._label_layers.index(target))
        self.target_combo.blockSignals(False)
        if self.target_layer is not target:  # the target was removed
            self._on_target_changed()
        if self.image_layer is not current:
            self._on_image_changed()

    @property
    def image_layer(self):
        i = self.image_combo.currentIndex()
        return self._image_layers[i] if 0 <= i < len(self._image_layers) else None

    @image_layer.setter
    def image_layer(self, layer) -> None:
        self.image_combo.setCurrentIndex(self._image_layers.index(layer))

    @property
    def target_layer(self):
        """The labels layer commits go to (``None``: a new one is made on the first commit)."""
        i = self.target_combo.currentIndex() - 1
        return self._label_layers[i] if 0 <= i < len(self._label_layers) else None

    @target_layer.setter
    def target_layer(self, layer) -> None:
        self._refresh_layer_choices()
        self.target_combo.setCurrentIndex(0 if layer is None else 1 + self._label_layers.index(layer))

    def _on_target_changed(self, *_) -> None:
        """A new target: the object id becomes its next free id (never one of its existing labels)."""
        if not getattr(self, "_keep_obj_id", False):
            self.obj_spin.setValue(next_free_id(self.target_layer))

    def _follow_contrast(self, layer) -> None:
        """Rebuild the session when the layer's contrast limits change ("layer contrast limits" mode)."""
        if self._contrast_source is not None:
            self._contrast_source.events.contrast_limits.disconnect(self._contrast_changed)
        self._contrast_source = layer
        if layer is not None:
            layer.events.contrast_limits.connect(self._contrast_changed)

    @reported
    def _on_contrast_limits(self) -> None:
        if self.contrast_combo.currentIndex() == 1 and not self._closed:
            self._prompts_changed()  # a new key: a new session; the prompts are answered again

    def _on_image_changed(self, *_) -> None:
        layer = self.image_layer
        self._follow_contrast(layer)
        self.axis_combo.blockSignals(True)
        self.channel_combo.blockSignals(True)
        self.axis_combo.clear()
        self.channel_combo.clear()
        if layer is not None:
            axes = nonspatial_axes(layer)
            if not axes:
                self.axis_combo.addItem("none (2D image)", None)
            names = axis_names(layer, self.viewer.dims.axis_labels)
            shape = layer.data[0].shape if layer.multiscale else layer.data.shape
            for ax in axes:
                what = f"{names[ax]} (axis {ax}, {shape[ax]} slices)" if names[ax] else f"axis {ax} ({shape[ax]} slices)"
                self.axis_combo.addItem(what, ax)
            if axes:
                self.axis_combo.setCurrentIndex(self.axis_combo.findData(default_axis(layer, names)))
            if layer.rgb:
                for name, c in (("RGB", None), ("red", 0), ("green", 1), ("blue", 2)):
                    self.channel_combo.addItem(name, c)
            else:
                self.channel_combo.addItem("grey (one channel per layer)", None)
        self.channel_combo.setEnabled(layer is not None and layer.rgb)
        self.axis_combo.blockSignals(False)
        self.channel_combo.blockSignals(False)
        self._on_view_changed()

    def set_axis(self, axis: int | None) -> None:
        """Choose the slice axis (layer data axis), as the combo box does."""
        self.axis_combo.setCurrentIndex(self.axis_combo.findData(axis))

    def set_channel(self, channel: int | None) -> None:
        self.channel_combo.setCurrentIndex(self.channel_combo.findData(channel))

    @reported
    def _on_view_changed(self, *_) -> None:
        layer = self.image_layer
        if layer is None:
            return
        n = len(self.current_view())
        for spin in (self.start_spin, self.stop_spin):
            spin.setRange(0, n - 1)
        self._reset_range()
        if self.model is not None:
            self._prompts_changed()  # a new session: previews of the existing prompts are recomputed

    def _reset_range(self) -> None:
        """The whole stack: every object starts with it (a range set for one object never sticks)."""
        self.start_spin.setValue(self.start_spin.minimum())
        self.stop_spin.setValue(self.stop_spin.maximum())

    # ------------------------------------------------------------------ model
    @reported
    def load_model(self) -> None:
        """Load the model chosen in the combo box, in the background."""
        from .. import models

        guard_llvm_clash()
        name, device = self.model_combo.currentText(), self.device_combo.currentText()
        if self.model_combo.currentData() == LOADED:
            self.set_status(f"{self.model.name} is loaded: pick another model to load")
            return
        kw: dict = {"device": None if device == "auto" else device}
        if name == LOCAL:
            ckpt, cfg = self.ckpt_edit.text().strip(), self.config_edit.text().strip()
            if not ckpt:
                raise UserError("choose a checkpoint file first")
            kw["checkpoint"] = ckpt
            if cfg.endswith((".yaml", ".yml")) or "/" in cfg:
                kw["config"] = cfg
            elif cfg:
                kw["model_type"] = cfg
        else:
            kw["model"] = name
        self.set_status(f"loading {name} …")
        done = lambda result, cancelled=False: self._model_loaded(result, cancelled, name)  # noqa: E731
        self._start_task("model", lambda task: models.load_model(**kw), desc=f"Loading {name}", on_done=done)

    def _model_loaded(self, result, cancelled=False, name=None) -> None:
        if cancelled:
            self.set_status("model loading cancelled" + (f"; still using {self.model.name}" if self.model else ""))
        elif isinstance(result, Failed):
            self.report(explain_download(result.error, name))
        else:
            self.set_model(result)

    @reported
    def set_model(self, model) -> None:
        """Use an already-loaded :class:`~napari_sam_stack.LoadedModel` (console, tests)."""
        self.model = model
        self._show_loaded_model(model)
        self.model_label.setText(f"{model.name} ({'SAM 2' if model.family == 'sam2' else 'SAM 1'}, {model.device})")
        self.set_status("model ready: click on the object (Points layer 'SAM points')")
        if self.image_layer is not None:
            self._prompts_changed()

    def _show_loaded_model(self, model) -> None:
        """The model box names the model in use: its registry entry, else an entry for it ("… (loaded)")."""
        combo = self.model_combo
        combo.blockSignals(True)
        old = combo.findData(LOADED)
        if old >= 0:
            combo.removeItem(old)
        if model.name in available_models():
            combo.setCurrentText(model.name)
        else:
            combo.insertItem(0, f"{model.name} (loaded)", LOADED)
            combo.setCurrentIndex(0)
        combo.blockSignals(False)
        self.show_local_fields(combo.currentText() == LOCAL)

    # ------------------------------------------------------------------ long tasks
    @property
    def busy(self) -> bool:
        """True while a background task, a session build or a preview request runs."""
        return self._task is not None or self._predictor.busy or bool(self._builders)

    def _start_task(self, kind: str, fn, *, desc: str, total: int = 0, generator=False, on_yield=None, on_done=None):
        if self._task is not None:
            raise UserError(f"{self._task_kind} is running: wait for it or press Cancel")

        def done(result, cancelled=False):
            self._task = None
            self.cancel_button.setEnabled(False)
            if on_done is not None:
                on_done(result, cancelled)

        def yielded(item):  # an error showing a result is reported once and stops the run
            if task.is_cancelled():
                return  # queued before the cancel
            try:
                on_yield(item)
            except Exception as e:
                self.report(e)
                task.cancel()

        self._task_kind = kind
        self.cancel_button.setEnabled(True)
        task = self._task = Task(fn, desc=desc, total=total, generator=generator,
                                 on_yield=None if on_yield is None else yielded,
                                 on_done=reporting(done, self.report),
                                 on_cancel=reporting(lambda r: done(r, True), self.report))
        return task

    def cancel(self) -> None:
        """Stop the running background task (embeddings or propagation); committed labels are untouched."""
        if self._task is not None:
            self._task.cancel()

    def _cancel_task(self, *kinds: str) -> None:
        """Cancel the running task if it is one of ``kinds``."""
        if self._task is not None and self._task_kind in kinds:
            self._task.cancel()

    @reported
    def compute_embeddings(self) -> None:
        """Encode every slice in the background (progress bar, Cancel); clicks stay answered meanwhile."""
        if self._task is not None:
            raise UserError(f"{self._task_kind} is running: wait for it or press Cancel")
        s = self._current_session(block=False)
        building = self._building if s is None else None  # the session a worker is making

        def run(task):
            session = s if building is None else building.result()
            return session.compute_embeddings(progress=task.progress, cancel=task.is_cancelled)

        n = len(self._view)
        self.set_status(f"computing embeddings of {n} slice(s) …")
        self._start_task("embeddings", run, desc="SAM embeddings", total=n, on_done=self._embeddings_done)

    def _embeddings_done(self, result, cancelled) -> None:
        if isinstance(result, Failed) and not isinstance(result.error, Cancelled):
            self.report(result.error)
            return
        cancelled = cancelled or result is False  # Session.compute_embeddings: False when it stopped early
        s = self._session
        n = sum(s.embeddings.is_computed(i) for i in range(len(s))) if s is not None else 0
        self.set_status(f"embeddings {'cancelled' if cancelled else 'done'}: {n}/{len(s) if s else 0} slices encoded")

    def wait(self, timeout_ms: int = 120000) -> None:
        """Process Qt events until background work is done (scripts and tests)."""
        from qtpy.QtCore import QCoreApplication, QElapsedTimer

        t = QElapsedTimer()
        t.start()
        while self.busy and t.elapsed() < timeout_ms:
            QCoreApplication.processEvents()
            self._predictor.wait(10)
        if self.busy:
            raise TimeoutError(f"background work still running after {timeout_ms} ms")

    # ------------------------------------------------------------------ closing
    def release(self) -> None:
        """Stop background work and remove this widget's shortcuts from the viewer and the layers."""
        self._closed = True
        self.cancel()
        self._predictor.invalidate()
        self._follow_contrast(None)
        ev = self.viewer.layers.events
        for e in (ev.inserted, ev.removed, ev.reordered):
            e.disconnect(self._refresh_layer_choices)
        for layer in (self.points_layer, self.boxes_layer):
            if layer is not None:
                layer.events.data.disconnect(self._on_prompt_data)
                layer.events.features.disconnect(self._on_prompt_data)
        if self.boxes_layer is not None:
            self.boxes_layer.events.data.disconnect(self._on_box_data)
        for target in (self.viewer, self.points_layer, self.boxes_layer, self.preview_layer):
            if target is not None:
                unbind_keys(self, target)

    def event(self, event) -> bool:
        if event.type() == QEvent.Type.ParentChange:  # napari's dock close button un-parents the widget
            if self.parent() is not None:
                self._docked = True
            elif getattr(self, "_docked", False):
                self.release()
        return super().event(event)

    def closeEvent(self, event) -> None:
        self.release()
        super().closeEvent(event)
