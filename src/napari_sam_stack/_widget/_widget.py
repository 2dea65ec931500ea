"""The dock widget: a view and a set of controls over a :class:`napari_sam_stack.Annotation`.

Choose image layer / slice axis / channel, load a model, compute embeddings in the
background, then click. ``widget.annotation`` (every object, its prompts and status, the
committed labels) and ``widget.session`` (its engine) are the objects the console scripts.
Panels of other modules dock below as collapsible sections (see ``_widget/__init__.py``).
"""

from __future__ import annotations

import importlib
import logging

from qtpy.QtCore import QEvent, QTimer

from ..errors import Cancelled
from ..models import available_models
from ._compat import guard_llvm_clash
from ._controls import LOCAL, Controls
from ._choices import LayerChoices
from ._current import CurrentView
from ._keys import bind_keys, unbind_keys
from ._layers import POSITIVE
from ._model import DEFAULT_MODEL, ModelActions
from ._object import ObjectActions
from ._panel import ObjectsPanel
from ._preview import PreviewView
from ._project import ProjectActions
from ._report import UserError, notify, reported, reporting, short_message
from ._run import RunActions
from ._workers import Failed, LatestOnly, Task

log = logging.getLogger("napari_sam_stack")

# (module, title): panels other modules add; each defines a QWidget class ``Panel`` (or ``...Panel``) taking this widget
PANELS = (("._automatic", "Segment everything"), ("._train", "Finetune on your labels"))


class SamStackWidget(LayerChoices, CurrentView, PreviewView, ObjectActions, RunActions, ProjectActions, ModelActions, Controls):
    """Segment Anything on stacks: click, preview, propagate, commit; every object in one annotation."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        guard_llvm_clash()
        self.viewer = napari_viewer
        self._closed = False
        self.model = None
        self.objects_panel = ObjectsPanel(self)
        self.objects_box.layout().addWidget(self.objects_panel)
        self._init_current()
        self._task: Task | None = None
        self._task_kind = ""
        self._predictor = LatestOnly(self._on_slice_ready, self.report)
        self._shown: dict = {}
        self._keyed_targets: dict = {}
        self._opened_layers: set = set()
        self._reset_object_state()
        self._polarity = POSITIVE
        self._box_mode = False
        self._image_layers: list = []
        self._contrast_source = None  # the image layer whose contrast_limits events we follow
        self._contrast_timer = QTimer(self, singleShot=True, interval=300)  # a slider drag: one rebuild at the end
        self._contrast_timer.timeout.connect(self._on_contrast_limits)
        self._contrast_changed = lambda *_: self._contrast_timer.start()
        self._sync_timer = QTimer(self, singleShot=True, interval=300)  # painting by hand: statuses follow
        self._sync_timer.timeout.connect(self._sync_labels)
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
        self.propagate_all_button.clicked.connect(lambda *_: self.propagate_all())
        self.commit_button.clicked.connect(lambda *_: self.commit())
        self.commit_all_button.clicked.connect(lambda *_: self.commit_all())
        self.clear_button.clicked.connect(lambda *_: self.clear_object())
        self.next_button.clicked.connect(lambda *_: self.next_object())
        self.edit_button.clicked.connect(lambda *_: self.edit_label())
        self.box_button.clicked.connect(lambda *_: self.box_mode())
        self.undo_button.clicked.connect(lambda *_: self.undo_labels())
        self.redo_button.clicked.connect(lambda *_: self.redo_labels())
        self.obj_spin.valueChanged.connect(self._on_obj_changed)
        self.target_combo.currentIndexChanged.connect(self._on_target_changed)
        self._init_project()

        ev = self.viewer.layers.events
        for e in (ev.inserted, ev.removed, ev.reordered):
            e.connect(self._refresh_layer_choices)
        bind_keys(self, self.viewer)
        self._show_mode()
        self._refresh_layer_choices()
        self.panels = self._dock_panels()

    def _dock_panels(self) -> dict:
        """Other modules' panels, each in a collapsible section; a module not there (yet) is skipped."""
        from qtpy.QtWidgets import QWidget

        panels = {}
        for module, title in PANELS:
            try:
                mod = importlib.import_module(module, __package__)
            except ImportError:
                continue
            cls = getattr(mod, "Panel", None) or next(
                (v for k, v in vars(mod).items() if k.endswith("Panel") and isinstance(v, type)
                 and issubclass(v, QWidget) and v.__module__ == mod.__name__), None)
            if cls is None:
                continue
            try:
                panels[module.strip("._")] = panel = cls(self)
            except Exception as e:  # a broken panel must not take the widget down
                log.warning("panel %s failed", module, exc_info=e)
                continue
            self.add_section(getattr(mod, "TITLE", title), panel)
        return panels

    # ------------------------------------------------------------------ for panels and scripts
    def run_worker(self, fn, *, desc: str, total: int = 0, generator: bool = False, on_yield=None, on_done=None,
                   kind: str | None = None) -> Task:
        """Run ``fn(task)`` in a worker thread with a progress bar and the widget's Cancel button.

        ``fn`` may call ``task.progress(done, total)`` and poll ``task.is_cancelled()``; with
        ``generator=True`` it yields values that reach ``on_yield(value)`` on the main thread.
        ``on_done(result, cancelled)`` runs on the main thread at the end (``result``: the
        return value, or a :class:`~napari_sam_stack._widget._workers.Failed`); then the
        preview and the objects panel are refreshed from ``widget.annotation``. One task
        runs at a time (a second one is refused with a message).
        """
        def done(result, cancelled):
            try:
                if isinstance(result, Failed) and not cancelled and on_done is None:
                    self.report(result.error)
                if on_done is not None:
                    on_done(result, cancelled)
            finally:
                self.refresh()

        return self._start_task(kind or desc, fn, desc=desc, total=total, generator=generator, on_yield=on_yield,
                                on_done=done)

    def refresh(self) -> None:
        """Repaint the preview and the objects panel from ``widget.annotation`` (after a script changed it)."""
        if self._annotation is not None and self._alive():
            self.objects_panel.set_annotation(self._annotation)
            self._paint_all()

    # ------------------------------------------------------------------ reporting
    def report(self, error: BaseException) -> None:
        """Show an error as a napari notification (all of it) and in the status line (one short line)."""
        notify(error)
        self.set_status(short_message(error))

    def set_status(self, text: str) -> None:
        """One line in the widget (elided to its width; the whole text is the tooltip)."""
        self.status_label.setText(text)
        self.status_label.setToolTip(text)

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
        self._autosave_timer.stop()
        self._set_annotation(None)
        for layer in (self.points_layer, self.boxes_layer):
            if layer is not None:
                layer.events.data.disconnect(self._on_prompt_data)
                layer.events.features.disconnect(self._on_prompt_data)
        if self.boxes_layer is not None:
            self.boxes_layer.events.data.disconnect(self._on_box_data)
        for target in (self.viewer, self.points_layer, self.boxes_layer, self.preview_layer,
                       *self._keyed_targets.values()):
            if target is not None:
                unbind_keys(self, target)
        for target in self._keyed_targets.values():
            target.events.paint.disconnect(self._on_paint)

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
