"""The widget's Qt controls (layout only; behaviour lives in ``_widget.py`` and its mixins).

Everything sits in a scroll area, so at napari's default window size no button is
squeezed or clipped: the dock scrolls instead (sideways too, if a docked panel is wider). The status line is one elided line (the
full text is its tooltip; long messages go to notifications).
"""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible, QElidingLabel

from ._keys import KEYS, key_of

LOCAL = "local checkpoint…"
DEVICES = ["auto", "cpu", "cuda", "mps"]


def _row(*widgets) -> QWidget:
    w = QWidget()
    lay = QHBoxLayout(w)
    lay.setContentsMargins(0, 0, 0, 0)
    for x in widgets:
        lay.addWidget(x)
    return w


def _button(text: str, method: str | None = None, tip: str = "") -> QPushButton:
    """A push button; its tooltip names the key bound to ``method``, if any."""
    key = key_of(method) if method else None
    b = QPushButton(text)
    b.setToolTip(" ".join(x for x in (tip, f"(key: {key})" if key else "") if x))
    return b


def _grid(*rows) -> QWidget:
    """Buttons in rows of equal columns (each keeps its size hint: the scroll area grows, not them)."""
    w = QWidget()
    lay = QGridLayout(w)
    lay.setContentsMargins(0, 0, 0, 0)
    for r, row in enumerate(rows):
        for c, b in enumerate(row):
            lay.addWidget(b, r, c, 1, 2 // len(row))
    return w


def _compact(widget: QWidget) -> None:
    """Long combo box entries (layer names, paths) never widen the dock: they are elided."""
    for combo in widget.findChildren(QComboBox):
        combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        combo.setMinimumContentsLength(8)


class _Scroll(QScrollArea):
    """A vertical scroll area as wide as its content needs (the dock never shrinks the controls sideways)."""

    def _width(self) -> int:
        inner = self.widget()
        extra = self.verticalScrollBar().sizeHint().width() + 2 * self.frameWidth()
        return (inner.minimumSizeHint().width() if inner is not None else 0) + extra

    def sizeHint(self):
        hint = super().sizeHint()
        hint.setWidth(max(hint.width(), self._width()))
        return hint

    def minimumSizeHint(self):
        hint = super().minimumSizeHint()
        hint.setWidth(max(hint.width(), self._width()))
        return hint


class Controls(QWidget):
    """All inputs and buttons; subclasses connect them."""

    def __init__(self, parent=None):
        super().__init__(parent)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        self.scroll = _Scroll()
        self.scroll.setWidgetResizable(True)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        outer.addWidget(self.scroll)
        inner = QWidget()
        self.scroll.setWidget(inner)
        root = QVBoxLayout(inner)
        root.setSpacing(4)
        self._root = root

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
        self.model_label = QElidingLabel("no model loaded")
        form.addRow("model", self.model_combo)
        self._ckpt_row = _row(self.ckpt_edit, self.ckpt_button)
        form.addRow("checkpoint", self._ckpt_row)
        form.addRow("config / type", self.config_edit)
        form.addRow("device", self.device_combo)
        form.addRow(_row(self.load_button, self.model_label))
        root.addWidget(box)

        # ---- embeddings and long tasks
        self.embed_button = QPushButton("Compute embeddings")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        root.addWidget(_row(self.embed_button, self.cancel_button))

        # ---- the current object
        box = QGroupBox("Object")
        form = QFormLayout(box)
        self.mode_label = QLabel()
        self.mode_label.setToolTip("New clicks are positive (object) or negative (background); N toggles")
        self.box_button = _button("Box", "box_mode", "draw one rectangle, then back to clicks")
        self.box_button.setCheckable(True)
        form.addRow("clicks", _row(self.mode_label, self.box_button))
        self.obj_spin = QSpinBox()
        self.obj_spin.setRange(1, 2**31 - 1)
        self.obj_spin.setToolTip("Id of the current object (its label on commit); another id selects that object")
        self.obj_spin.setKeyboardTracking(False)  # typing 12 selects 12, not 1 then 12
        self.target_combo = QComboBox()
        self.overwrite_check = QCheckBox("overwrite other objects")
        self.start_spin, self.stop_spin = QSpinBox(), QSpinBox()
        self.start_spin.setToolTip("First slice propagation may reach (reset for every object)")
        self.stop_spin.setToolTip("Last slice propagation may reach (reset for every object)")
        self.absent_spin = QSpinBox()
        self.absent_spin.setRange(0, 10000)
        self.absent_spin.setSpecialValueText("off")
        self.absent_spin.setValue(1)
        self.absent_spin.setToolTip(
            "Stop where the object ends: a direction of propagation stops after this many consecutive slices "
            "where SAM 2 says the object is absent (off: always run to the end of the range). Starts at 1 on "
            "a z axis and off on a time axis, until you set it")
        self._absent_chosen = False  # the user set it: it no longer follows the slice axis
        self.absent_spin.valueChanged.connect(lambda *_: setattr(self, "_absent_chosen", True))
        form.addRow("object id", self.obj_spin)
        form.addRow("labels layer", self.target_combo)
        form.addRow(self.overwrite_check)
        form.addRow("slices", _row(self.start_spin, QLabel("to"), self.stop_spin))
        form.addRow("stop after absent", self.absent_spin)
        self.propagate_button = _button("Propagate", "propagate", "the current object")
        self.propagate_all_button = _button("Propagate all", "propagate_all", "every object with prompts, in one run")
        self.commit_button = _button("Commit", "commit", "the current object into the labels layer")
        self.commit_all_button = _button("Commit all", "commit_all", "every uncommitted or edited object")
        self.clear_button = _button("Clear", "clear_object", "the current object's prompts and preview")
        self.next_button = _button("Next object", "next_object")
        self.edit_button = _button("Edit selected label", None,
                                   "Load the labels layer's selected label as the current object (mask prompt)")
        self.undo_button = _button("Undo", "undo_labels", "the last commit/delete on the labels layer")
        self.redo_button = _button("Redo", "redo_labels", "on the labels layer")
        form.addRow(_grid((self.propagate_button, self.propagate_all_button),
                          (self.commit_button, self.commit_all_button),
                          (self.clear_button, self.next_button),
                          (self.undo_button, self.redo_button),
                          (self.edit_button,)))
        root.addWidget(box)

        # ---- every object (filled by the objects panel) and the project
        self.objects_box = QGroupBox("Objects")
        QVBoxLayout(self.objects_box)
        root.addWidget(self.objects_box)
        box = QGroupBox("Project")
        lay = QVBoxLayout(box)
        self.save_button = QPushButton("Save project…")
        self.open_button = QPushButton("Open project…")
        self.restore_button = QPushButton("Restore autosave")
        self.restore_button.setVisible(False)
        lay.addWidget(_row(self.save_button, self.open_button))
        lay.addWidget(self.restore_button)
        root.addWidget(box)
        self._panels_at = root.count()  # collapsible panels of other modules go here

        self.status_label = QElidingLabel("")
        self.status_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        root.addWidget(self.status_label)
        keys = QLabel("<br>".join(f"<tt>{k}</tt>: {d}" for _, k, d in KEYS))
        keys.setWordWrap(True)
        self.keys_section = QCollapsible("Keys")
        self.keys_section.addWidget(keys)
        root.addWidget(self.keys_section)
        root.addStretch(1)
        _compact(inner)

    def add_section(self, title: str, content: QWidget) -> QCollapsible:
        """Dock ``content`` as a collapsible section (collapsed) above the status line."""
        section = QCollapsible(title)
        _compact(content)
        section.addWidget(content)
        self._root.insertWidget(self._panels_at, section)
        self._panels_at += 1
        return section

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "SAM checkpoint", "", "Checkpoints (*.pt *.pth *.ckpt);;All files (*)")
        if path:
            self.ckpt_edit.setText(path)

    def show_local_fields(self, visible: bool) -> None:
        for w in (self._ckpt_row, self.config_edit):
            w.setEnabled(visible)
