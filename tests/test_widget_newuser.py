"""GUI tests of what a new user ran into (issue 11, "found when tried as a new user would")."""

from __future__ import annotations

import numpy as np
import pytest
from test_widget import click, expected, make_widget, nuclei  # noqa: F401  (fixtures)
from test_widget_stack import notes  # noqa: F401  (fixture)

pytestmark = pytest.mark.gui


def _collapsed(w) -> bool:
    from superqt import QCollapsible

    while w is not None:
        if isinstance(w, QCollapsible) and not w.isExpanded():
            return True
        w = w.parentWidget()
    return False


def _buttons_keep_their_size(widget):
    from qtpy.QtWidgets import QPushButton

    buttons = [b for b in widget.findChildren(QPushButton) if b.isVisibleTo(widget) and not _collapsed(b.parentWidget())]
    assert len(buttons) >= 12
    for b in buttons:
        hint = b.minimumSizeHint()
        assert b.height() >= hint.height() and b.width() >= hint.width(), (b.text(), b.size(), hint)


def test_offline_first_run_is_one_status_line_and_no_button_squeezes(make_widget, sam2_model, nuclei, notes,
                                                                     monkeypatch, qtbot):
    from qtpy.QtWidgets import QApplication

    from napari_sam_stack import models

    viewer, widget, _ = make_widget(nuclei[0], sam2_model)
    viewer.window._qt_window.show()  # napari's default window size
    spec = models.ModelSpec("offline-test", "sam2", "http://127.0.0.1:9/offline.pt", None,
                            config="configs/sam2.1/sam2.1_hiera_t.yaml")
    monkeypatch.setitem(models._REGISTRY, spec.name, spec)
    widget.model_combo.addItem(spec.name)
    widget.model_combo.setCurrentText(spec.name)
    widget.load_button.click()
    widget.wait()
    QApplication.processEvents()
    kind, message = notes[-1]
    assert kind == "error" and "pick 'local checkpoint…'" in message
    assert str(models.weights_dir() / "offline.pt") in message and "load_model(checkpoint" not in message
    status = widget.status_label.text()
    assert "\n" not in status and len(status) <= 100 and "offline" in status
    assert widget.status_label.height() < 2.5 * widget.status_label.fontMetrics().height()
    assert widget.model is sam2_model
    _buttons_keep_their_size(widget)
    # the dock scrolls instead of squeezing: its content keeps at least its minimum height
    inner = widget.scroll.widget()
    assert inner.height() >= inner.minimumSizeHint().height()
    from qtpy.QtWidgets import QGroupBox

    for box in inner.findChildren(QGroupBox):  # the widget's own controls fit the dock's width: nothing cut off
        assert box.minimumSizeHint().width() <= widget.scroll.viewport().width(), box.title()


def test_undo_key_and_button_act_on_the_labels_whatever_layer_is_active(make_widget, sam2_model, nuclei, qtbot):
    from qtpy.QtCore import Qt

    viewer, widget, layer = make_widget(nuclei[0], sam2_model)
    viewer.dims.set_current_step(0, 3)
    click(widget, [3, 20, 30])
    obj = widget.preview_layer.data != 0
    assert obj.any()
    widget.commit()
    target = widget.target_layer
    assert viewer.layers.selection.active is widget.points_layer  # where a user is after Shift-C
    canvas = viewer.window._qt_viewer.canvas.native
    qtbot.keyClick(canvas, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert not target.data.any()
    qtbot.keyClick(canvas, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    np.testing.assert_array_equal(target.data == 1, obj)
    viewer.layers.selection.active = layer  # the image: the buttons work as well
    widget.undo_button.click()
    assert not target.data.any()
    widget.undo_button.click()  # nothing more to undo: a message, nothing changes
    assert "nothing to undo" in widget.status_label.text()
    widget.redo_button.click()
    np.testing.assert_array_equal(target.data == 1, obj)


def test_click_mode_is_shown_permanently_and_in_the_point_colour(make_widget, sam2_model, nuclei):
    from napari.utils.colormaps.standardize_color import transform_color

    viewer, widget, _ = make_widget(nuclei[0], sam2_model)
    assert "positive" in widget.mode_label.text()
    np.testing.assert_allclose(transform_color(widget.points_layer.current_face_color)[0], transform_color("lime")[0])
    viewer.dims.set_current_step(0, 2)
    click(widget, [2, 20, 30])
    widget.toggle_polarity()
    assert "negative" in widget.mode_label.text()
    np.testing.assert_allclose(transform_color(widget.points_layer.current_face_color)[0], transform_color("magenta")[0])
    np.testing.assert_allclose(widget.points_layer.face_color[0], transform_color("lime")[0])  # the old point stays
    widget.points_layer.add([2, 40, 10])
    widget.wait()  # a prediction arrives: the mode is still shown
    assert "negative" in widget.mode_label.text() and "IoU" in widget.status_label.text()
    np.testing.assert_allclose(widget.points_layer.face_color[1], transform_color("magenta")[0])
    assert list(widget.points_layer.features["label"]) == ["positive", "negative"]
    # a prompt layer made afresh (the user deleted it) keeps the mode
    viewer.layers.remove(widget.points_layer)
    widget.clear_object()
    assert list(widget.points_layer.feature_defaults["label"]) == ["negative"]
    np.testing.assert_allclose(transform_color(widget.points_layer.current_face_color)[0], transform_color("magenta")[0])
    # a new object (Next object, or after a commit) starts positive: its first click says where it is
    widget.next_object()
    assert "positive" in widget.mode_label.text()
    assert list(widget.points_layer.feature_defaults["label"]) == ["positive"]


def test_box_key_then_back_to_clicks_by_itself(make_widget, sam2_model, nuclei, qtbot):
    from qtpy.QtCore import Qt

    viewer, widget, _ = make_widget(nuclei[0], sam2_model)
    viewer.dims.set_current_step(0, 4)
    canvas = viewer.window._qt_viewer.canvas.native
    qtbot.keyClick(canvas, Qt.Key.Key_B, Qt.KeyboardModifier.ShiftModifier)
    assert viewer.layers.selection.active is widget.boxes_layer
    assert str(widget.boxes_layer.mode) == "add_rectangle" and widget.box_button.isChecked()
    rect = np.array([[4, 10, 12], [4, 10, 40], [4, 30, 40], [4, 30, 12]], float)
    widget.boxes_layer.add_rectangles(rect)  # emits 'added' as the end of a drawn rectangle does
    qtbot.waitUntil(lambda: viewer.layers.selection.active is widget.points_layer, timeout=3000)
    assert str(widget.points_layer.mode) == "add" and not widget.box_button.isChecked()
    widget.wait()
    want, _ = expected(widget, 4, box=[10, 12, 30, 40])
    np.testing.assert_array_equal(widget.preview_layer.data[4] != 0, want)
    widget.box_button.click()  # the button does the same, and pressing it again leaves box mode
    assert viewer.layers.selection.active is widget.boxes_layer
    widget.box_button.click()
    assert viewer.layers.selection.active is widget.points_layer and not widget.box_button.isChecked()


def test_slice_range_of_one_object_does_not_stick_to_the_next(make_widget, sam2_model, nuclei):
    viewer, widget, _ = make_widget(nuclei[0], sam2_model)
    viewer.dims.set_current_step(0, 3)
    click(widget, [3, 20, 30])
    widget.start_spin.setValue(2)
    widget.stop_spin.setValue(4)
    widget.commit()
    assert (widget.start_spin.value(), widget.stop_spin.value()) == (0, 5)
    widget.start_spin.setValue(1)
    widget.next_object()
    assert (widget.start_spin.value(), widget.stop_spin.value()) == (0, 5)


def test_model_box_shows_the_model_actually_loaded(make_widget, sam2_model, sam1_model, nuclei):
    viewer, widget, _ = make_widget(nuclei[0], sam2_model)
    combo = widget.model_combo
    assert combo.currentText() == f"{sam2_model.name} (loaded)"
    widget.set_model(sam1_model)
    texts = [combo.itemText(i) for i in range(combo.count())]
    assert combo.currentText() == f"{sam1_model.name} (loaded)"
    assert sum(t.endswith("(loaded)") for t in texts) == 1 and "sam2.1_hiera_tiny" in texts
    widget.load_button.click()  # the loaded entry: nothing to load, the model stays
    assert widget.model is sam1_model and widget._task is None
    combo.setCurrentText("sam2.1_hiera_tiny")  # picking a registry model is still possible
    assert combo.currentText() == "sam2.1_hiera_tiny"


def test_zcyx_layer_defaults_to_z_and_names_the_axes(make_widget, sam2_model, nuclei):
    img = nuclei[0]
    zcyx = np.stack([img, img[:, ::-1]], axis=1)  # (6, 2, 48, 64)
    viewer, widget, layer = make_widget(zcyx, sam2_model, axis_labels=("z", "c", "y", "x"))
    texts = [widget.axis_combo.itemText(i) for i in range(widget.axis_combo.count())]
    assert texts == ["z (axis 0, 6 slices)", "c (axis 1, 2 slices)"]
    assert widget.axis_combo.currentData() == 0
    assert widget.session.shape == (6, 48, 64) and widget.session.frames.fixed == {1: 0}
    # a time series named t is walked along t
    tyx = viewer.add_image(img, name="movie", axis_labels=("t", "y", "x"))
    widget.image_layer = tyx
    assert widget.axis_combo.currentText() == "t (axis 0, 6 slices)"
    # without axis names (a fresh viewer): never the channel-sized axis
    viewer, widget, layer = make_widget(zcyx, sam2_model)
    assert widget.axis_combo.currentData() == 0
    assert widget.axis_combo.currentText() == "axis 0 (6 slices)"
