"""The "Segment everything" panel: every instance on the current slice (2D), or the instances of
key slices propagated through the stack (3D, SAM 2).

Docked by the main widget as a collapsible section (``PANELS`` in ``_widget.py``); it works
on ``widget.annotation`` and runs in the widget's workers (progress bar, its Cancel button).
3D runs key slice by key slice: segment-everything in a worker, the new objects made on
the main thread, their propagation in a worker, then the next key slice (which then sees
them: see :func:`napari_sam_stack.automatic.add_automatic`). At the end every new object is
committed in ONE edit, so one Ctrl+Z removes them all; a cancelled run removes the objects
it made and leaves the labels untouched.
"""

from __future__ import annotations

import numpy as np
from qtpy.QtWidgets import QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QLabel, QLineEdit, QPushButton, QSpinBox, QWidget

from ._report import UserError, reported

TITLE = "Segment everything"
MODES = ("2D: current slice", "3D: key slices, then propagate")


def _spin(lo, hi, value, step=None, decimals=None, tip=""):
    box = QDoubleSpinBox() if decimals is not None else QSpinBox()
    if decimals is not None:
        box.setDecimals(decimals)
    box.setRange(lo, hi)
    if step is not None:
        box.setSingleStep(step)
    box.setValue(value)
    box.setToolTip(tip)
    return box


class AutomaticPanel(QWidget):
    """Parameters (the model's defaults, :func:`napari_sam_stack.automatic.defaults`) and a Run button."""

    def __init__(self, widget, parent=None):
        from ..automatic import defaults

        super().__init__(parent)
        self.widget = widget
        self.new_ids: list[int] = []  # objects made by the running / last run
        self.result = None  # (kind, info) of the last finished run
        d = self._defaults = defaults(widget.model)
        form = QFormLayout(self)
        self.mode_combo = QComboBox()
        self.mode_combo.addItems(MODES)
        self.keys_edit = QLineEdit()
        self.keys_edit.setPlaceholderText("current slice; or e.g. 0, 15, 30")
        self.keys_edit.setToolTip("3D: slices to segment everything on (their instances seed the propagation)")
        self.every_spin = _spin(0, 100000, 0, tip="3D: also every k-th slice (0: off)")
        self.every_spin.setSpecialValueText("off")
        self.points_spin = _spin(1, 256, d["points_per_side"], tip="grid points per side (points_per_side)")
        self.iou_spin = _spin(0.0, 1.0, d["pred_iou_thresh"], 0.05, 2, "keep masks whose predicted IoU is above this")
        self.stability_spin = _spin(0.0, 1.0, d["stability_score_thresh"], 0.05, 2,
                                    "keep masks whose stability score is at least this")
        self.nms_spin = _spin(0.0, 1.0, d["box_nms_thresh"], 0.05, 2, "box IoU above which duplicates are removed")
        self.min_area_spin = _spin(0, 10**7, d["min_mask_region_area"],
                                   tip="holes and islands smaller than this (pixels) are removed")
        self.max_area_spin = _spin(0.0, 1.0, d["max_area_fraction"], 0.05, 2,
                                   "masks larger than this fraction of the slice are dropped (background)")
        self.crops_spin = _spin(0, 3, 0, tip="crop layers (each encodes 4^k crops more, cached)")
        self.multimask_check = QCheckBox("three masks per point")
        self.multimask_check.setChecked(d["multimask"])
        self.multimask_check.setToolTip("SAM's three candidates per grid point (multimask); off: one, the model's "
                                        "single-mask answer")
        self.run_button = QPushButton("Segment everything")
        self.run_button.clicked.connect(lambda *_: self.run())
        self.info_label = QLabel("")
        self.info_label.setWordWrap(True)
        for name, w in (("mode", self.mode_combo), ("key slices", self.keys_edit), ("every k-th", self.every_spin),
                        ("points per side", self.points_spin), ("min predicted IoU", self.iou_spin),
                        ("min stability", self.stability_spin), ("box NMS", self.nms_spin),
                        ("min area (px)", self.min_area_spin), ("max area (fraction)", self.max_area_spin),
                        ("crop layers", self.crops_spin), ("candidates", self.multimask_check)):
            form.addRow(name, w)
        form.addRow(self.run_button)
        form.addRow(self.info_label)

    def _fields(self) -> dict:
        """Parameter name -> (get, set) of the control showing it."""
        spins = {"points_per_side": self.points_spin, "pred_iou_thresh": self.iou_spin,
                 "stability_score_thresh": self.stability_spin, "box_nms_thresh": self.nms_spin,
                 "min_mask_region_area": self.min_area_spin, "max_area_fraction": self.max_area_spin,
                 "crop_n_layers": self.crops_spin}
        out = {k: (w.value, w.setValue) for k, w in spins.items()}
        out["multimask"] = (self.multimask_check.isChecked, self.multimask_check.setChecked)
        return out

    def params(self) -> dict:
        return {k: get() for k, (get, _) in self._fields().items()}

    def model_changed(self, model) -> None:
        """Show ``model``'s defaults, except where the user set a value of their own."""
        from ..automatic import defaults

        new = defaults(model)
        for k, (get, put) in self._fields().items():
            if k in new and k in self._defaults and get() == type(get())(self._defaults[k]):
                put(new[k])
        self._defaults = new

    def key_slices(self) -> list[int] | None:
        text = self.keys_edit.text().replace(";", ",").strip()
        if not text:
            return None
        try:
            return [int(t) for t in text.split(",") if t.strip()]
        except ValueError:
            raise UserError(f"key slices must be whole numbers separated by commas, got {text!r}") from None

    # ------------------------------------------------------------------ run
    @reported
    def run(self, mode: int | None = None, **params):
        """Start a run (``mode``: 0 = 2D, 1 = 3D; default the combo's); ``params`` override the panel's."""
        from ..automatic import Automatic, Params

        w = self.widget
        if not self.run_button.isEnabled():
            raise UserError("segment everything is running: wait for it or press Cancel")
        a = w.annotation
        if a is None:
            raise UserError("choose an image layer first")
        mode = self.mode_combo.currentIndex() if mode is None else int(mode)
        params = {**self.params(), **params}
        index = w.current_index() if a.session.axis is not None else 0
        self.new_ids = []
        if mode == 0:
            Params.make(a.session.model, **params)  # bad values: a message now, no task
            return self._start_2d(a, index, params)
        keys = self.key_slices()
        every = self.every_spin.value() or None
        self._max_absent = w.absent_spin.value() or None  # the main panel's 'stop after absent', as for one object
        auto = Automatic(a, [index] if keys is None and every is None else keys, every=every, **params)
        self._next_key(auto, 0)

    def _start_2d(self, a, index, params):
        from ..automatic import generate, not_covered

        def fn(task):
            return generate(a.session, index, progress=task.progress, cancel=task.is_cancelled, **params)

        def done(result, cancelled):
            if self._failed(result, cancelled):
                return
            labels, records = result
            masks, kept, skipped = not_covered(a, index, labels, records)  # what the slice has already is kept
            for m in masks:
                o = a.new_object()
                self.new_ids.append(o)
                a.add_prompt(o, index, mask=m)
            self._finish(a, f"slice {index}: {len(records)} instance(s)"
                            + (f", {skipped} of them already there" if skipped else ""), known=skipped)

        task = self.widget.run_worker(fn, desc="Segment everything", total=1, on_done=self._guard(done),
                                      kind="segment everything")
        self._busy(f"segmenting everything on slice {index} …")
        return task

    def _next_key(self, auto, pos: int):
        a = auto.annotation
        if pos == len(auto.keys):
            self._finish(a, f"key slice(s) {auto.keys}")
            return
        k = auto.keys[pos]

        def find(task):
            return auto.find(k, progress=task.progress, cancel=task.is_cancelled)

        def found(result, cancelled):
            if self._failed(result, cancelled):
                return
            masks, records, skipped = result
            ids = list(auto.seed(k, masks, records))
            self.new_ids.extend(ids)
            self.info_label.setText(f"slice {k}: {len(ids)} new, {skipped} already tracked")
            if not ids:
                self._next_key(auto, pos + 1)
                return

            max_absent = self._max_absent

            def propagate(task):  # (building the run only reads the annotation)
                run = a.propagation(ids, progress=task.progress, cancel=task.is_cancelled, max_absent=max_absent)
                for _ in run:
                    pass
                return run

            def propagated(result, cancelled):
                if self._failed(result, cancelled):
                    return
                result.apply()
                self._next_key(auto, pos + 1)

            self.widget.run_worker(propagate, desc=f"Propagating {len(ids)} object(s)", total=len(a.session),
                                   on_done=self._guard(propagated), kind="propagate all")

        self.widget.run_worker(find, desc=f"Segment everything, slice {k}", total=1, on_done=self._guard(found),
                               kind="segment everything")
        self._busy(f"segmenting everything on key slice {k} ({pos + 1}/{len(auto.keys)}) …")

    # ------------------------------------------------------------------ end
    def report(self, error: BaseException) -> None:
        self.widget.report(error)

    def _guard(self, fn):
        """A task callback whose error ends the run like a failed task (objects removed, message)."""
        from ._workers import Failed

        def run(result, cancelled):
            try:
                fn(result, cancelled)
            except Exception as e:
                self._failed(Failed(e), False)

        return run

    def _busy(self, text: str) -> None:
        self.run_button.setEnabled(False)
        self.widget.set_status(text)

    def _failed(self, result, cancelled) -> bool:
        """End the run on a cancel or an error: the objects it made are removed, the labels untouched."""
        from ..errors import Cancelled
        from ._workers import Failed

        if not cancelled and not isinstance(result, Failed):
            return False
        a = self.widget.annotation
        for o in self.new_ids:
            if a is not None and o in a.objects:
                a.delete(o)
        self.new_ids = []
        self.run_button.setEnabled(True)
        if cancelled or isinstance(result.error, Cancelled):
            self.info_label.setText("cancelled: nothing added")
            self.widget.set_status("segment everything cancelled; the labels are unchanged")
        else:
            self.info_label.setText("failed: " + str(result.error).splitlines()[0])
            self.widget.report(result.error)
        return True

    def _finish(self, a, where: str, known: int = 0) -> None:
        self.run_button.setEnabled(True)
        ids = list(self.new_ids)
        if not ids:
            text = f"{where}: nothing new found" + ("" if known else " (lower the thresholds?)")
        else:
            import warnings

            with warnings.catch_warnings():  # one per object whose pixels all lie on other labels: summed up below
                warnings.simplefilter("ignore", UserWarning)
                edit = a.commit(ids)  # ONE edit: one Ctrl+Z removes every new object's pixels
            text = f"{where}: {len(ids)} new object(s) committed ({len(edit)} pixels; Ctrl+Z undoes it)"
            empty = np.setdiff1d(ids, np.unique(a.labels)).size
            if empty:
                text += f"; {empty} of them got no pixel (all on labels already there)"
            if self.widget.obj_id in ids:  # the id the user was about to click with is taken now: the next
                self.widget.next_object()  # click starts a new object instead of editing (and erasing) that one
                text += f"; next click: object {self.widget.obj_id}"
        self.result = ids
        self.info_label.setText(text)
        self.widget.set_status(text)


Panel = AutomaticPanel
