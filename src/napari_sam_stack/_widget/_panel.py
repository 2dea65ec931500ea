"""The objects panel: every object of the annotation, its colour, prompted slices and status.

Selecting a row makes that object the current one (its prompts come back, the viewer
jumps to its first prompted slice); objects not committed, or edited since their commit,
are highlighted, and a summary line counts them.
"""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtGui import QColor, QIcon, QPixmap
from qtpy.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

# status -> (shown as, row background or None)
STATUS_LOOK = {
    "draft": ("draft", QColor(90, 80, 20), "prompts and their 2D masks, not committed"),
    "propagated": ("propagated", QColor(90, 80, 20), "propagated, not committed"),
    "edited": ("edited", QColor(110, 55, 10), "edited since its commit: commit it again"),
    "committed": ("committed", None, "its masks are in the labels layer"),
}
ID_ROLE = Qt.ItemDataRole.UserRole


def _slices_text(slices: list[int], limit: int = 8) -> str:
    text = ", ".join(map(str, slices[:limit]))
    return text + (f" … (+{len(slices) - limit})" if len(slices) > limit else "") if slices else "—"


class ObjectsPanel(QWidget):
    """A table of the annotation's objects; the widget calls ``update_object`` as events arrive."""

    def __init__(self, widget, parent=None):
        super().__init__(parent)
        self._widget = widget
        self._annotation = None
        self._rows: dict[int, int] = {}
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        self.summary = QLabel("no objects yet")
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["id", "prompted slices", "status"])
        self.table.verticalHeader().setVisible(False)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.ResizeToContents)
        self.table.setMinimumHeight(120)
        self.table.itemSelectionChanged.connect(self._on_selection)
        self.delete_button = QPushButton("Delete object")
        self.delete_button.setToolTip("Delete the selected object and its committed pixels (Ctrl+Z / Undo brings it back)")
        self.delete_button.clicked.connect(lambda *_: self._widget.delete_object(self.selected_id()))
        lay.addWidget(self.summary)
        lay.addWidget(self.table)
        row = QHBoxLayout()
        row.addWidget(self.delete_button)
        lay.addLayout(row)

    # ------------------------------------------------------------------ content
    def set_annotation(self, a) -> None:
        self._annotation = a
        self.table.setRowCount(0)
        self._rows.clear()
        if a is not None:
            for o in a.objects:
                self.update_object(o, summary=False)
        self.update_summary()

    def update_object(self, obj_id: int, summary: bool = True) -> None:
        """Show object ``obj_id`` as it is now (a row added, changed or removed)."""
        a = self._annotation
        obj = None if a is None else a.objects.get(obj_id)
        row = self._rows.get(obj_id)
        if obj is None:
            if row is not None:
                self.table.removeRow(row)
                del self._rows[obj_id]
                self._rows = {o: (r - 1 if r > row else r) for o, r in self._rows.items()}
        else:
            if row is None:
                row = self.table.rowCount()
                self.table.insertRow(row)
                self._rows[obj_id] = row
                for col in range(3):
                    self.table.setItem(row, col, QTableWidgetItem())
            text, background, meaning = STATUS_LOOK.get(obj.status, (obj.status, None, obj.status))
            cells = [str(obj.id), _slices_text(obj.prompted()), text]
            for col, value in enumerate(cells):
                item = self.table.item(row, col)
                item.setText(value)
                item.setData(ID_ROLE, obj.id)
                item.setBackground(background if background is not None else QColor(0, 0, 0, 0))
            self.table.item(row, 0).setIcon(self._swatch(obj.id))
            self.table.item(row, 1).setToolTip(f"prompts on {obj.prompted()}; masks on {len(obj.slices())} slice(s)")
            self.table.item(row, 2).setToolTip(meaning)
        if summary:
            self.update_summary()

    def update_summary(self) -> None:
        a = self._annotation
        if a is None or not a.objects:
            self.summary.setText("no objects yet")
            return
        statuses = [o.status for o in a.objects.values()]
        todo = sum(s in ("draft", "propagated") for s in statuses)
        edited = statuses.count("edited")
        n = len(statuses)
        self.summary.setText(f"{n} object{'' if n == 1 else 's'}: {todo} not committed, {edited} edited since commit"
                             + (" (highlighted)" if edited else ""))
        self.summary.setWordWrap(True)

    def _swatch(self, obj_id: int) -> QIcon:
        layer = self._widget.target_layer or self._widget.preview_layer
        pix = QPixmap(12, 12)
        if layer is None:
            pix.fill(QColor("gray"))
        else:
            r, g, b, _ = (int(255 * float(c)) for c in layer.get_color(obj_id))
            pix.fill(QColor(r, g, b))
        return QIcon(pix)

    # ------------------------------------------------------------------ selection
    def selected_id(self) -> int | None:
        items = self.table.selectedItems()
        return None if not items else int(items[0].data(ID_ROLE))

    def select(self, obj_id: int | None) -> None:
        """Highlight ``obj_id``'s row (no row when it is not an object yet) without selecting it again."""
        self.table.blockSignals(True)
        try:
            self.table.clearSelection()
            row = self._rows.get(obj_id)
            if row is not None:
                self.table.selectRow(row)
        finally:
            self.table.blockSignals(False)

    def _on_selection(self) -> None:
        o = self.selected_id()
        if o is not None and o != self._widget.obj_id:
            self._widget.select_object(o)

    def ids(self) -> list[int]:
        """Object ids in row order (what the table shows)."""
        return [int(self.table.item(r, 0).data(ID_ROLE)) for r in range(self.table.rowCount())]

    def statuses(self) -> dict[int, str]:
        return {int(self.table.item(r, 0).data(ID_ROLE)): self.table.item(r, 2).text() for r in range(self.table.rowCount())}
