"""GUI tests of the stack workflow: background embeddings, propagation, commit/undo, cancel, errors."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam_stack import Session
from napari_sam_stack.testing import synthetic_nuclei

pytestmark = pytest.mark.gui


@pytest.fixture
def stack():
    return synthetic_nuclei(shape=(8, 48, 64), n_nuclei=3, seed=2)[0]


@pytest.fixture
def make_widget(make_napari_viewer):
    from napari_sam_stack._widget import SamStackWidget

    def make(image, model=None, **layer_kw):
        viewer = make_napari_viewer()
        layer = viewer.add_image(image, **layer_kw)
        widget = SamStackWidget(viewer)
        viewer.window.add_dock_widget(widget, area="right")
        widget.image_layer = layer
        if model is not None:
            widget.set_model(model)
        return viewer, widget, layer

    return make


@pytest.fixture
def notes(monkeypatch):
    """Notifications the widget shows, as (kind, message)."""
    import napari.utils.notifications as nt

    seen = []
    for kind in ("error", "warning", "info"):
        monkeypatch.setattr(nt, f"show_{kind}", lambda msg, kind=kind: seen.append((kind, str(msg))))
    return seen


def reference_labels(image, model, index, point, start=0, stop=None):
    s = Session(image, model, axis=0, in_memory=True)
    s.add_prompt(1, index, points=[point], point_labels=[1])
    out = {}
    for i, logits in s.iter_propagate(start=start, stop=stop):
        out[i] = logits[1] > 0
    return out


def test_propagate_fills_every_slice_of_the_range(make_widget, sam2_model, stack):
    viewer, widget, _ = make_widget(stack, sam2_model)
    viewer.dims.set_current_step(0, 3)
    widget.points_layer.add([3, 24, 30])
    widget.wait()
    widget.start_spin.setValue(1)
    widget.stop_spin.setValue(6)
    widget.propagate()
    widget.wait()
    want = reference_labels(stack, sam2_model, 3, [24, 30], start=1, stop=6)
    assert sorted(want) == [1, 2, 3, 4, 5, 6]
    assert sum(m.any() for m in want.values()) >= 4, "the tiny model must give masks for this test to mean something"
    for i, mask in want.items():
        np.testing.assert_array_equal(widget.preview_layer.data[i] != 0, mask, err_msg=f"slice {i}")
    assert not widget.preview_layer.data[[0, 7]].any()  # outside the range
    assert "propagated over 6 slice(s)" in widget.status_label.text()


def test_commit_new_id_keeps_others_and_one_undo(make_widget, sam2_model, stack):
    viewer, widget, _ = make_widget(stack, sam2_model)
    existing = np.zeros(stack.shape, np.uint16)
    existing[:, 20:30, 25:40] = 7  # an object committed earlier, overlapping the click
    target = viewer.add_labels(existing.copy(), name="nuclei labels")
    widget.target_layer = target
    widget.next_object()
    assert widget.obj_id == 8
    viewer.dims.set_current_step(0, 2)
    widget.points_layer.add([2, 24, 30])
    widget.wait()
    widget.propagate()
    widget.wait()
    obj = widget.preview_layer.data != 0
    assert obj.any() and (obj & (existing == 7)).any() and (obj & (existing == 0)).any()
    undo_depth = len(target._undo_history)
    widget.commit()
    assert len(target._undo_history) == undo_depth + 1
    np.testing.assert_array_equal(target.data == 8, obj & (existing == 0))
    np.testing.assert_array_equal(target.data == 7, existing == 7)  # never overwritten
    assert widget.obj_id == 9 and not widget.preview_layer.data.any() and len(widget.points_layer.data) == 0
    target.undo()  # ONE Ctrl+Z
    np.testing.assert_array_equal(target.data, existing)
    target.redo()
    assert (target.data == 8).sum() == (obj & (existing == 0)).sum()


def test_commit_overwrite_and_new_layer(make_widget, sam2_model, stack):
    viewer, widget, _ = make_widget(stack, sam2_model)
    viewer.dims.set_current_step(0, 4)
    widget.points_layer.add([4, 24, 30])
    widget.wait()
    obj = widget.preview_layer.data != 0
    assert obj.any()
    widget.commit()  # no labels layer yet: one is made, wide enough
    target = widget.target_layer
    assert target is not None and target.data.dtype == np.uint32 and target.data.shape == stack.shape
    np.testing.assert_array_equal(target.data == 1, obj)
    assert widget.obj_id == 2
    widget.points_layer.add([4, 24, 30])
    widget.wait()
    widget.overwrite_check.setChecked(True)
    widget.commit()
    np.testing.assert_array_equal(target.data == 2, obj)  # the same mask now belongs to object 2
    assert not (target.data == 1).any()
    target.undo()
    np.testing.assert_array_equal(target.data == 1, obj)


def test_cancel_propagation_leaves_labels_untouched(make_widget, sam2_model):
    image = synthetic_nuclei(shape=(40, 48, 64), n_nuclei=4, seed=3)[0]
    viewer, widget, _ = make_widget(image, sam2_model)
    committed = np.zeros(image.shape, np.uint32)
    committed[5:9, 10:20, 10:20] = 3
    target = viewer.add_labels(committed.copy(), name="labels")
    widget.target_layer = target
    viewer.dims.set_current_step(0, 20)
    widget.points_layer.add([20, 24, 30])
    widget.wait()
    widget.propagate()
    seen = []
    widget._task.worker.yielded.connect(lambda item: (seen.append(item[0]), widget.cancel()))
    widget.wait()
    assert 1 <= len(seen) < 40
    assert "cancelled" in widget.status_label.text()
    np.testing.assert_array_equal(target.data, committed)
    assert len(target._undo_history) == 0
    assert widget._task is None and widget.cancel_button.isEnabled() is False


def test_embeddings_in_background_keep_the_viewer_live(make_widget, sam2_model, qtbot):
    from qtpy.QtCore import QTimer

    image = synthetic_nuclei(shape=(24, 48, 64), n_nuclei=4, seed=4)[0]
    viewer, widget, _ = make_widget(image, sam2_model)
    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(widget._task is not None))
    timer.start(5)
    widget.compute_embeddings()
    assert widget._task is not None and widget.cancel_button.isEnabled()
    assert widget._task.pbar.total == 24
    # a click on a slice not encoded yet is answered while the precompute still runs
    viewer.dims.set_current_step(0, 23)
    answered = []
    widget._on_prediction = lambda i, p, f=widget._on_prediction: (
        answered.append((i, widget._task is not None, sum(widget.session.embeddings.is_computed(j) for j in range(24)))),
        f(i, p),
    )
    widget.points_layer.add([23, 24, 30])
    widget.wait()
    timer.stop()
    assert sum(ticks) >= 3, "the Qt event loop must keep running while embeddings compute"
    assert answered and answered[0][0] == 23
    assert answered[0][1], "the click must be answered before the precompute finishes"
    assert answered[0][2] < 24
    s = widget.session
    assert all(s.embeddings.is_computed(i) for i in range(24))
    want = s.predict(23, points=[[24, 30]], point_labels=[1])
    np.testing.assert_array_equal(widget.preview_layer.data[23] != 0, want.masks[int(np.argmax(want.scores))])
    assert "24/24" in widget.status_label.text()


def test_cancel_embeddings(make_widget, sam2_model):
    image = synthetic_nuclei(shape=(30, 48, 64), n_nuclei=3, seed=5)[0]
    viewer, widget, _ = make_widget(image, sam2_model)
    widget.compute_embeddings()
    widget.cancel()
    widget.wait()
    s = widget.session
    assert widget._task is None
    assert sum(s.embeddings.is_computed(i) for i in range(30)) < 30
    assert "cancelled" in widget.status_label.text()


def test_errors_are_notifications(make_widget, sam2_model, stack, notes, monkeypatch):
    from napari_sam_stack import models

    viewer, widget, _ = make_widget(stack)
    widget.propagate()  # no model
    assert notes[-1][0] == "warning" and "load one first" in notes[-1][1]
    widget.set_model(sam2_model)
    widget.propagate()  # no prompt
    assert notes[-1][0] == "warning" and "nothing to propagate" in notes[-1][1]
    widget.commit()  # nothing to commit: no labels layer is made
    assert "nothing to commit" in notes[-1][1] and widget.target_layer is None
    widget.cycle_candidate()
    assert notes[-1][0] == "warning"
    # an id the chosen labels layer cannot hold: refused before anything is written
    small = viewer.add_labels(np.zeros(stack.shape, np.uint8), name="uint8 labels")
    widget.target_layer = small
    viewer.dims.set_current_step(0, 2)
    widget.points_layer.add([2, 24, 30])
    widget.wait()
    assert widget.preview_layer.data[2].any()
    first = widget.obj_id
    widget.obj_spin.setValue(300)  # an object with that id: refused at its first prompt
    widget.points_layer.add([2, 30, 40])
    widget.wait()
    assert notes[-1][0] == "warning" and "does not fit" in notes[-1][1]
    assert 300 not in widget.annotation.objects
    widget.commit()
    assert not small.data.any() and len(small._undo_history) == 0
    widget.select_object(first)
    assert widget.preview_layer.data[2].any()  # the first object is still there to commit elsewhere
    widget.clear_object()
    # weights that cannot be downloaded: the loader's message, no traceback, no model change
    spec = models.ModelSpec("offline-test", "sam2", "http://127.0.0.1:9/offline.pt", None,
                            config="configs/sam2.1/sam2.1_hiera_t.yaml")
    monkeypatch.setitem(models._REGISTRY, spec.name, spec)
    widget.model_combo.addItem(spec.name)
    widget.model_combo.setCurrentText(spec.name)
    widget.load_model()
    widget.wait()
    assert notes[-1][0] == "error" and "Could not download offline-test" in notes[-1][1]
    assert widget.model is sam2_model
    widget.image_layer.data = stack[0]  # the layer became 2D: propagation refuses with a message
    widget._on_image_changed()
    widget.points_layer.add([24, 30])
    widget.wait()
    widget.propagate()
    assert "nothing to propagate to" in notes[-1][1]


def test_local_checkpoint_loads_in_background(make_widget, sam2_files, stack):
    from napari_sam_stack._widget._controls import LOCAL

    viewer, widget, _ = make_widget(stack)
    ckpt, config = sam2_files
    widget.model_combo.setCurrentText(LOCAL)
    widget.ckpt_edit.setText(str(ckpt))
    widget.config_edit.setText(str(config))
    widget.device_combo.setCurrentText("cpu")
    widget.load_button.click()
    widget.wait()
    assert widget.model is not None and widget.model.family == "sam2"
    assert widget.session.model is widget.model
    assert widget.points_layer in viewer.layers


def test_edit_existing_label_with_mask_prompt(make_widget, sam2_model, stack):
    viewer, widget, _ = make_widget(stack, sam2_model)
    existing = np.zeros(stack.shape, np.uint8)
    existing[2:5, 15:35, 20:45] = 5
    target = viewer.add_labels(existing.copy(), name="labels")
    widget.target_layer = target
    target.selected_label = 5
    viewer.dims.set_current_step(0, 3)
    widget.edit_label()
    assert widget.obj_id == 5
    np.testing.assert_array_equal(widget.preview_layer.data != 0, existing == 5)
    np.testing.assert_array_equal(widget.session.prompts[5][3].mask, existing[3] == 5)
    # a click refines slice 3 from the loaded mask: one decoder call with points + mask
    widget.points_layer.add([3, 25, 30])
    widget.wait()
    pred = widget.session.predict(3, points=[[25, 30]], point_labels=[1], mask=existing[3] == 5)
    np.testing.assert_array_equal(widget.preview_layer.data[3] != 0, pred.masks[int(np.argmax(pred.scores))])
    np.testing.assert_array_equal(widget.preview_layer.data[[2, 4]] != 0, existing[[2, 4]] == 5)


def test_keys_are_bound_on_viewer_and_prompt_layers(make_widget, sam2_model, stack, qtbot):
    from qtpy.QtCore import Qt

    viewer, widget, _ = make_widget(stack, sam2_model)
    for target in (viewer, widget.points_layer, widget.boxes_layer):
        assert any(getattr(f, "__name__", "") == "sam_stack_toggle_polarity" for f in target.keymap.values())
    viewer.layers.selection.active = widget.points_layer
    canvas = viewer.window._qt_viewer.canvas.native
    assert widget._polarity == "positive"
    qtbot.keyClick(canvas, Qt.Key.Key_N)
    assert widget._polarity == "negative"
    viewer.dims.set_current_step(0, 1)
    widget.points_layer.add([1, 24, 30])
    widget.wait()
    assert list(widget.points_layer.features["label"]) == ["negative"]
    qtbot.keyClick(canvas, Qt.Key.Key_N)
    widget.points_layer.add([1, 20, 20])
    widget.wait()
    qtbot.keyClick(canvas, Qt.Key.Key_X, Qt.KeyboardModifier.ShiftModifier)  # clear the object
    assert len(widget.points_layer.data) == 0 and not widget.preview_layer.data.any()


def test_cancelled_model_load_keeps_the_current_model(make_widget, sam2_model, sam1_file, stack):
    from napari_sam_stack._widget._controls import LOCAL

    viewer, widget, _ = make_widget(stack, sam2_model)
    widget.model_combo.setCurrentText(LOCAL)
    widget.ckpt_edit.setText(str(sam1_file))
    widget.config_edit.setText("auto")
    widget.load_model()
    widget.cancel()
    widget.wait()
    assert widget.model is sam2_model
    assert "cancelled" in widget.status_label.text()


def _propagating(make_widget, sam2_model):
    """A 40-slice stack with one click on slice 20 and its propagation started."""
    image = synthetic_nuclei(shape=(40, 48, 64), n_nuclei=4, seed=3)[0]
    viewer, widget, layer = make_widget(image, sam2_model)
    viewer.dims.set_current_step(0, 20)
    widget.points_layer.add([20, 24, 30])
    widget.wait()
    widget.propagate()
    return viewer, widget, layer


@pytest.mark.parametrize("action", ["next", "clear", "new session"])
def test_propagation_never_reaches_another_object(make_widget, sam2_model, action):
    """Shift-N / Shift-X / a view change mid-run cancel the run; its late results are dropped."""
    viewer, widget, _ = _propagating(make_widget, sam2_model)
    seen = []

    def interrupt(item):
        seen.append(item[0])
        if len(seen) == 1:
            {"next": widget.next_object, "clear": widget.clear_object,
             "new session": lambda: widget.contrast_combo.setCurrentIndex(1)}[action]()

    widget._task.worker.yielded.connect(interrupt)
    widget.wait()
    assert 1 <= len(seen) < 40
    assert widget._task is None
    preview = widget.preview_layer.data != 0
    if action == "new session":  # the click is answered again by the new session, on its slice only
        want = widget.session.predict(20, points=[[24, 30]], point_labels=[1])
        np.testing.assert_array_equal(preview[20], want.mask)
        preview[20] = False
    elif action == "next":  # object 1 stays, with its click; nothing of the cancelled run was stored
        assert widget.obj_id == 2 and "cancelled" in widget.status_label.text()
        assert list(widget.session.prompts) == [1] and widget.annotation.objects[1].slices() == [20]
        np.testing.assert_array_equal(preview[20], widget.annotation.mask(1, 20))
        preview[20] = False
    else:
        assert widget.obj_id == 1
        assert not widget.session.prompts and "cancelled" in widget.status_label.text()
    assert not preview.any()


def test_an_error_showing_a_propagated_slice_is_a_notification(make_widget, sam2_model, stack, notes, monkeypatch):
    from napari_sam_stack._widget import _preview

    viewer, widget, _ = make_widget(stack, sam2_model)
    viewer.dims.set_current_step(0, 3)
    widget.points_layer.add([3, 24, 30])
    widget.wait()

    def broken(*args, **kw):
        raise RuntimeError("preview write failed")

    monkeypatch.setattr(_preview.PreviewView, "_paint_run_slice", broken)  # what shows a propagated slice
    widget.propagate()
    widget.wait()
    errors = [n for n in notes if n[0] == "error"]
    assert errors == [("error", "RuntimeError: preview write failed")]  # once, then the run stops
    assert widget._task is None


def test_choosing_a_labels_layer_starts_at_its_next_free_id(make_widget, sam2_model, stack):
    """Committing to a picked labels layer never erases the user's existing labels."""
    viewer, widget, _ = make_widget(stack, sam2_model)
    existing = np.zeros(stack.shape, np.uint16)
    for k in (1, 2, 3):
        existing[:, 4 * k:4 * k + 3, 2:8] = k  # away from the click
    target = viewer.add_labels(existing.copy(), name="user labels")
    assert widget.obj_id == 1
    widget.target_combo.setCurrentIndex(widget.target_combo.findText("user labels"))  # what the user does
    assert widget.target_layer is target and widget.obj_id == 4
    viewer.dims.set_current_step(0, 3)
    widget.points_layer.add([3, 24, 30])
    widget.wait()
    obj = widget.preview_layer.data != 0
    assert obj.any()
    widget.commit()
    for k in (1, 2, 3):
        np.testing.assert_array_equal(target.data == k, existing == k)
    np.testing.assert_array_equal(target.data == 4, obj & (existing == 0))
    # a new image of another shape: the target no longer fits, commits go to a new layer
    other = viewer.add_image(stack[:, :40])
    widget.image_layer = other
    assert widget.target_layer is None and widget.obj_id == 1


def test_removing_the_image_cancels_propagation(make_widget, sam2_model):
    viewer, widget, layer = _propagating(make_widget, sam2_model)
    seen = []
    widget._task.worker.yielded.connect(lambda item: (seen.append(item[0]), len(seen) == 1 and viewer.layers.remove(layer)))
    widget.wait()
    assert 1 <= len(seen) < 40 and layer not in viewer.layers
    assert "cancelled" in widget.status_label.text()
    assert widget._task is None and widget.cancel_button.isEnabled() is False
