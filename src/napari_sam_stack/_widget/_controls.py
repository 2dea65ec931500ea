"""The widget's Qt controls (layout only; behaviour lives in ``_widget.py``)."""

from __future__ import annotations

from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ._keys import KEYS

LOCAL = "local checkpoint…"
DEVICES = ["auto", "cpu", "cuda", "mps"]


def _row(*widgets) -> QWidget:
    w = QWidget()
    lay = QHBoxLayout(w)
    lay.setContentsMargins(0, 0, 0, 0)
    for x in widgets:
        lay.addWidget(x)
    return w


class Controls(QWidget):
    """All inputs and buttons; subclasses connect them."""

    def __init__(self, parent=None):
        super().__init__(parent)
        root = QVBoxLayout(self)

        # ---- image
        box = QGroupBox("Image")
        form = QFormLayout(box)
        self.image_combo = QComboBox()
        self.axis_combo = QComboBox()
        self.axis_combo.setToolTip("Slice axis (z or t). Other non-spatial axes stay at the viewer's current index.")
        self.channel_combo = QComboBox()
        self.channel_combo.setToolTip("RGB layers: all three channels, or one. For multichannel data, pick the layer of one channel.")
        self.contrast_combo = QComboBox()
        self.contrast_combo.addItems(["auto (volume percentiles)", "layer contrast limits"])
        form.addRow("layer", self.image_combo)
        form.addRow("slice axis", self.axis_combo)
        form.addRow("channel", self.channel_combo)
        form.addRow("contrast", self.contrast_combo)
        root.addWidget(box)

        # ---- model
        box = QGroupBox("Model")
        form = QFormLayout(box)
        self.model_combo = QComboBox()
        self.ckpt_edit = QLineEdit()
        self.ckpt_edit.setPlaceholderText("checkpoint file (.pt / .pth)")
        self.ckpt_button = QPushButton("…")
        self.ckpt_button.setMaximumWidth(30)
        self.ckpt_button.clicked.connect(self._browse)
        self.config_edit = QLineEdit()
        self.config_edit.setPlaceholderText("SAM 2: config .yaml; SAM 1: vit_b / vit_l / vit_h / auto")
        self.device_combo = QComboBox()
        self.device_combo.addItems(DEVICES)
        self.load_button = QPushButton("Load model")
        self.model_label = QLabel("no model loaded")
        self.model_label.setWordWrap(True)
        form.addRow("model", self.model_combo)
        self._ckpt_row = _row(self.ckpt_edit, self.ckpt_button)
        form.addRow("checkpoint", self._ckpt_row)
        form.addRow("config / type", self.config_edit)
        form.addRow("device", self.device_combo)
        form.addRow(self.load_button)
        form.addRow(self.model_label)
        root.addWidget(box)

        # ---- embeddings and long tasks
        self.embed_button = QPushButton("Compute embeddings")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        root.addWidget(_row(self.embed_button, self.cancel_button))

        # ---- object
        box = QGroupBox("Object")
        form = QFormLayout(box)
        self.obj_spin = QSpinBox()
        self.obj_spin.setRange(1, 2**31 - 1)
        self.obj_spin.setToolTip("Label id the current object gets on commit")
        self.target_combo = QComboBox()
        self.overwrite_check = QCheckBox("overwrite other objects")
        self.start_spin, self.stop_spin = QSpinBox(), QSpinBox()
        self.start_spin.setToolTip("First slice propagation may reach")
        self.stop_spin.setToolTip("Last slice propagation may reach")
        form.addRow("object id", self.obj_spin)
        form.addRow("labels layer", self.target_combo)
        form.addRow(self.overwrite_check)
        form.addRow("slices", _row(self.start_spin, QLabel("to"), self.stop_spin))
        self.propagate_button = QPushButton("Propagate")
        self.commit_button = QPushButton("Commit")
        self.clear_button = QPushButton("Clear")
        self.next_button = QPushButton("Next object")
        self.edit_button = QPushButton("Edit selected label")
        self.edit_button.setToolTip("Load the labels layer's selected label as the current object (mask prompt)")
        form.addRow(_row(self.propagate_button, self.commit_button))
        form.addRow(_row(self.clear_button, self.next_button))
        form.addRow(self.edit_button)
        root.addWidget(box)

        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        root.addWidget(self.status_label)
        keys = QLabel("<b>Keys</b><br>" + "<br>".join(f"<tt>{k}</tt>: {d}" for _, k, d in KEYS))
        keys.setWordWrap(True)
        root.addWidget(keys)
        root.addStretch(1)

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "SAM checkpoint", "", "Checkpoints (*.pt *.pth *.ckpt);;All files (*)")
        if path:
            self.ckpt_edit.setText(path)

    def show_local_fields(self, visible: bool) -> None:
        for w in (self._ckpt_row, self.config_edit):
            w.setEnabled(visible)
