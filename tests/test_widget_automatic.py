"""GUI tests of the "Segment everything" panel, docked in the real widget: 3D on the sample stack lands
as objects in the objects panel and the labels layer, and one Ctrl+Z removes them all; 2D the same on
one slice; Cancel leaves nothing; a SAM 1 model asked for 3D says so."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gui

# random weights: thresholds loosened as in tests/test_automatic.py (same meaning, same reasons)
LOOSE = {"points_per_side": 4, "stability_score_offset": 0.02, "mask_threshold": 0.12, "pred_iou_thresh": 0.0,
         "stability_score_thresh": 0.0, "box_nms_thresh": 1.0, "min_visible_fraction": 0.2,
         "min_mask_region_area": 10, "max_area_fraction": 1.0}


@pytest.fixture
def sample():
    from napari_sam_stack._widget._sample import make_sample_nuclei_real

    return make_sample_nuclei_real()[0][0]  # real nuclei, 31 x 61 x 57 uint16


@pytest.fixture
def make_widget(make_napari_viewer):
    from napari_sam_stack._widget import SamStackWidget

    def make(image, model):
        viewer = make_napari_viewer()
        layer = viewer.add_image(image)
        widget = SamStackWidget(viewer)
        viewer.window.add_dock_widget(widget, area="right")
        widget.image_layer = layer
        widget.set_model(model)
        return viewer, widget

    return make


def _labels(widget):
    return np.asarray(widget.target_layer.data)


def test_3d_on_the_sample_stack_lands_as_objects_and_one_undo(make_widget, sam2_model, sample):
    viewer, widget = make_widget(sample, sam2_model)
    panel = widget.panels["automatic"]
    assert panel.mode_combo.count() == 2 and panel.points_spin.value() == 32  # microscopy defaults shown
    panel.mode_combo.setCurrentIndex(1)
    panel.keys_edit.setText("12, 20")
    panel.run(**LOOSE)
    widget.wait(600000)
    ids = panel.result
    assert ids and ids == list(range(1, len(ids) + 1))
    assert set(ids) <= set(widget.objects_panel.ids())  # they appear in the objects panel
    a = widget.annotation
    assert all(a.objects[o].status == "committed" for o in ids)
    assert any(len(a.objects[o].slices()) > 2 for o in ids)  # propagated through the stack
    labels = _labels(widget)
    assert set(np.unique(labels)) - {0} <= set(ids) and labels.any()
    assert len({z for z in range(labels.shape[0]) if labels[z].any()}) > 2
    widget.undo_labels()  # Ctrl+Z
    assert not _labels(widget).any()  # one undo step removes every new object's pixels
    assert all(a.objects[o].status != "committed" for o in ids)


def _segment_slice_15(make_widget, model, sample):
    """A widget on the sample stack after a 2D segment-everything run on slice 15; the new ids."""
    viewer, widget = make_widget(sample, model)
    viewer.dims.set_current_step(0, 15)
    panel = widget.panels["automatic"]
    panel.run(mode=0, **LOOSE)
    widget.wait(300000)
    return widget, panel.result


def test_2d_current_slice(make_widget, sam2_model, sample):
    widget, ids = _segment_slice_15(make_widget, sam2_model, sample)
    a = widget.annotation
    assert ids and all(a.objects[o].prompts.keys() == {15} for o in ids)
    labels = _labels(widget)
    assert labels[15].any() and not np.delete(labels, 15, axis=0).any()
    assert set(ids) <= set(widget.objects_panel.ids())
    # again on the same slice: what it holds already is not added twice (as in 3D)
    panel = widget.panels["automatic"]
    n, labels = len(a.objects), _labels(widget).copy()
    panel.run(mode=0, **LOOSE)
    widget.wait(300000)
    assert panel.result == [] and len(a.objects) == n and "already there" in widget.status_label.text()
    np.testing.assert_array_equal(_labels(widget), labels)
    widget.undo_labels()
    assert not _labels(widget).any()


def test_after_segment_everything_the_next_click_is_a_new_object(make_widget, sam2_model, sample):
    """The object id moves past the new objects: a click and Commit make object max+1 and leave every
    automatic object's pixels alone (it used to stay at 1, so the click edited, and its commit erased, object 1)."""
    widget, ids = _segment_slice_15(make_widget, sam2_model, sample)
    assert ids and widget.obj_id == max(ids) + 1 and widget.obj_id not in widget.annotation.objects
    before = _labels(widget).copy()
    widget.points_layer.add([[15, 30, 28]])
    widget.wait()
    widget.commit()
    widget.wait()
    a = widget.annotation
    assert max(ids) + 1 in a.objects and all(a.objects[o].status == "committed" for o in ids)
    after = _labels(widget)
    for o in ids:  # every automatic object keeps its pixels, except those the new one may not take anyway
        assert ((before == o) == (after == o)).all()


def test_3d_stops_after_absent_as_the_main_panel_says(make_widget, sam2_model, sample, monkeypatch):
    from napari_sam_stack.annotation import Annotation

    seen = []
    real = Annotation.propagation
    monkeypatch.setattr(Annotation, "propagation",
                        lambda self, *a, **kw: seen.append(kw.get("max_absent")) or real(self, *a, **kw))
    for absent, want in ((2, 2), (0, None)):  # 0 shows 'off'
        viewer, widget = make_widget(sample, sam2_model)  # (a second run would find its instances tracked)
        panel = widget.panels["automatic"]
        widget.absent_spin.setValue(absent)
        panel.keys_edit.setText("12")
        seen.clear()
        panel.run(mode=1, **LOOSE)
        widget.wait(600000)
        assert panel.result and seen == [want]


def test_cancel_adds_nothing(make_widget, sam2_model, sample):
    viewer, widget = make_widget(sample, sam2_model)
    panel = widget.panels["automatic"]
    panel.keys_edit.setText("12")
    panel.run(mode=1, **LOOSE)
    widget.cancel()
    widget.wait(300000)
    assert panel.new_ids == [] and not widget.annotation.objects
    assert widget.target_layer is None or not _labels(widget).any()
    assert "cancelled" in panel.info_label.text()
    assert panel.run_button.isEnabled()


def test_sam1_asked_for_3d_says_so(make_widget, sam1_model, monkeypatch):
    viewer, widget = make_widget(np.random.default_rng(0).integers(0, 255, (4, 40, 50), np.uint8), sam1_model)
    errors = []
    monkeypatch.setattr(widget, "report", errors.append)
    panel = widget.panels["automatic"]
    panel.run(mode=1)
    widget.wait()
    assert len(errors) == 1 and "SAM 2" in str(errors[0])
    assert not widget.annotation.objects and panel.run_button.isEnabled()


def test_panel_shows_each_models_defaults_but_keeps_what_the_user_set(make_widget, sam2_model, sample):
    from napari_sam_stack import automatic, load_model

    viewer, widget = make_widget(sample, sam2_model)
    panel = widget.panels["automatic"]
    assert panel.params() == {**automatic.MICROSCOPY, "crop_n_layers": 0}
    micro = automatic.defaults("nss_nuclei_micro")
    widget.set_model(load_model("nss_nuclei_micro", device="cpu"))
    assert panel.params() == {**micro, "crop_n_layers": 0}  # its own thresholds, one mask per point
    assert not panel.multimask_check.isChecked()
    panel.iou_spin.setValue(0.3)  # the user's own choice
    widget.set_model(sam2_model)
    assert panel.params() == {**automatic.MICROSCOPY, "pred_iou_thresh": 0.3, "crop_n_layers": 0}
