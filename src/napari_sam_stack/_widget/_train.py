"""The "Train on committed labels" panel: finetune the loaded model on this image's committed labels.

Docked by the main widget as a collapsible section (``PANELS`` in ``_widget.py``). Training
runs in the widget's worker (progress bar, its Cancel button stops it) and yields the loss
after every step; the checkpoint and a resumable state are written atomically every
``SAVE_EVERY`` steps and at the end, so a cancelled run leaves the last complete files.
"Use trained model" loads the checkpoint and puts it in the model box.
"""

from __future__ import annotations

from pathlib import Path

from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QWidget,
)

from ._report import UserError, reported

TITLE = "Train on committed labels"
SAVE_EVERY = 25


def default_output(model) -> Path:
    from ..models import cache_root

    stem = Path(str(model.name)).stem if model is not None else "model"
    return cache_root() / "finetuned" / f"{stem}-finetuned.pt"


class TrainPanel(QWidget):
    """Controls of one training run over ``widget.annotation`` (labels) and ``widget.model``."""

    def __init__(self, widget, parent=None):
        from ..finetune import DEFAULTS, TRAINABLE

        super().__init__(parent)
        self.widget = widget
        self.task = None
        self.trainer = None
        self.last: tuple | None = None  # (step, total, loss) of the running/last run
        form = QFormLayout(self)
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(1, 1_000_000)
        self.steps_spin.setValue(200)
        self.trainable_combo = QComboBox()
        self.trainable_combo.addItems(list(TRAINABLE))
        self.trainable_combo.setCurrentText("decoder")
        self.trainable_combo.setToolTip("decoder: fast and safe on few labels; decoder+memory (SAM 2): also "
                                        "propagation; lora: adapters on the encoder; all: every weight")
        self.lr_edit = QLineEdit(str(DEFAULTS["lr"]))
        self.out_edit = QLineEdit()
        self.out_edit.setPlaceholderText("checkpoint to write (.pt)")
        browse = QPushButton("…")
        browse.setMaximumWidth(30)
        browse.clicked.connect(self._browse)
        row = QWidget()
        lay = QHBoxLayout(row)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.out_edit)
        lay.addWidget(browse)
        self.continue_check = QCheckBox("continue / replace an existing file")
        self.continue_check.setToolTip("Continue the run whose state (<file>.state) is there, or replace the file")
        self.train_button = QPushButton("Train")
        self.train_button.clicked.connect(lambda *_: self.train())
        self.use_button = QPushButton("Use trained model")
        self.use_button.setEnabled(False)
        self.use_button.clicked.connect(lambda *_: self.use_trained())
        self.loss_label = QLabel("")
        form.addRow("steps", self.steps_spin)
        form.addRow("trains", self.trainable_combo)
        form.addRow("learning rate", self.lr_edit)
        form.addRow("output", row)
        form.addRow(self.continue_check)
        form.addRow(self.train_button, self.use_button)
        form.addRow(self.loss_label)

    def report(self, error: BaseException) -> None:
        self.widget.report(error)

    def _browse(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Trained checkpoint", self.out_edit.text(), "Checkpoints (*.pt)")
        if path:
            self.out_edit.setText(path)

    @property
    def output(self) -> Path:
        text = self.out_edit.text().strip()
        return Path(text).expanduser() if text else default_output(self.widget.model)

    @reported
    def train(self):
        """Start training on the committed labels of the current image (in the widget's worker)."""
        import numpy as np

        from ..finetune import Trainer, TrainingData

        w = self.widget
        if w.model is None:
            raise UserError("load a model first: training starts from it")
        annotation = w.annotation
        if annotation is None:
            raise UserError("choose an image layer first")
        labels = np.array(annotation.labels, copy=True)  # a snapshot: committing while training changes nothing
        if not labels.any():
            raise UserError("no committed labels yet: commit some objects (or pick a labels layer) first")
        try:
            lr = float(self.lr_edit.text())
        except ValueError:
            raise UserError(f"learning rate {self.lr_edit.text()!r} is not a number") from None
        out = self.output
        state = out.with_name(out.name + ".state")
        resume = self.continue_check.isChecked() and state.is_file()
        if out.exists() and not self.continue_check.isChecked():
            raise UserError(f"{out} exists: tick 'continue / replace an existing file' or choose another output")
        session = annotation.session
        data = TrainingData([(session.frames, labels if session.axis is not None else labels.reshape(labels.shape[-2:]))])
        steps = self.steps_spin.value()
        options = dict(steps=steps, trainable=self.trainable_combo.currentText(), lr=lr)
        model = w.model

        def run(task):
            trainer = Trainer.resume(state, model, data, steps=steps) if resume else Trainer(model, data, **options)
            self.trainer = trainer
            yield trainer.step_count, steps, float("nan")
            for step, total, loss in trainer.iter_fit(task.is_cancelled, out=out, state=state,
                                                      save_every=SAVE_EVERY):
                task.progress(step, total)
                yield step, total, loss
            return out

        self.train_button.setEnabled(False)
        self.loss_label.setText("starting …")
        self.task = w.run_worker(run, desc="Training", total=steps, generator=True, on_yield=self._progress,
                                 on_done=self._done, kind="train")
        return self.task

    def _progress(self, value) -> None:
        self.last = value
        step, total, loss = value
        self.loss_label.setText(f"step {step}/{total}: loss {loss:.4f}" if loss == loss else f"step {step}/{total}")

    def _done(self, result, cancelled) -> None:
        from ._workers import Failed

        self.train_button.setEnabled(True)
        if cancelled:
            self.loss_label.setText(self.loss_label.text() + " — cancelled (files keep the last save)")
            self.widget.set_status("training cancelled; the checkpoint keeps its last complete save")
        elif isinstance(result, Failed):
            self.loss_label.setText("failed: " + str(result.error).splitlines()[0])
            self.widget.report(result.error)
        else:
            self.use_button.setEnabled(True)
            self.widget.set_status(f"trained model written to {result}: 'Use trained model' loads it")
        if self.output.is_file():
            self.use_button.setEnabled(True)

    @reported
    def use_trained(self):
        """Load the written checkpoint and put it in the model box (``widget.set_model``)."""
        from ..models import load_model

        out = self.output
        if not out.is_file():
            raise UserError(f"{out} does not exist yet: train first")
        config = out.with_suffix(".yaml")
        model = self.widget.model
        if model is not None and model.family == "sam":
            loaded = load_model(checkpoint=out, model_type="auto", device=model.device)
        else:
            loaded = load_model(checkpoint=out, config=config if config.is_file() else None,
                                device=None if model is None else model.device)
        self.widget.set_model(loaded)
        return loaded


Panel = TrainPanel
