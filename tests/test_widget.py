"""GUI tests: the real dock widget in a real napari viewer (Xvfb), tiny random-weight models.

Every mask the widget shows is compared with what the Session API gives for the same
prompt, so these tests check the plumbing (coordinates, slices, ids, undo), not SAM's quality.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam_stack.testing import synthetic_nuclei

pytestmark = pytest.mark.gui


@pytest.fixture
def nuclei():
    image, labels = synthetic_nuclei(shape=(6, 48, 64), n_nuclei=3, seed=1)
    return image, labels


@pytest.fixture
def make_widget(make_napari_viewer):
    from napari_sam_stack._widget import SamStackWidget

    def make(image, model, **layer_kw):
        viewer = make_napari_viewer()
        layer = viewer.add_image(image, **layer_kw)
        widget = SamStackWidget(viewer)
        viewer.window.add_dock_widget(widget, area="right")
        widget.image_layer = layer
        widget.set_model(model)
        return viewer, widget, layer

    yield make


def click(widget, coords, positive=True):
    if not positive and widget._polarity != "negative" or positive and widget._polarity != "positive":
        widget.toggle_polarity()
    widget.points_layer.add(np.atleast_2d(coords))
    widget.wait()


def expected(widget, index, **prompt):
    """What the Session API predicts for this prompt (the widget's best candidate)."""
    pred = widget.session.predict(index, **prompt)
    return pred.masks[int(np.argmax(pred.scores))], pred


def test_manifest_and_sample_data():
    import npe2

    pm = npe2.PluginManager.instance()
    pm.discover()
    manifest = pm.get_manifest("napari-sam-stack")
    manifest.validate_imports()
    assert {w.display_name for w in manifest.contributions.widgets} == {"Segment Anything (stack)"}
    from napari_sam_stack._widget import make_sample_nuclei, make_sample_nuclei_real

    (data, meta, kind), = make_sample_nuclei()
    assert kind == "image" and data.dtype == np.uint16 and data.ndim == 3 and data.shape[0] >= 20
    assert meta["scale"][0] > meta["scale"][1]
    (real, _, _), = make_sample_nuclei_real()
    assert real.shape == (31, 61, 57) and real.dtype == np.uint16


def test_click_previews_that_slice_only(make_widget, sam2_model, nuclei):
    viewer, widget, layer = make_widget(nuclei[0], sam2_model)
    viewer.dims.set_current_step(0, 3)
    before = widget.preview_layer.data.copy()
    click(widget, [3, 20, 30])
    want, pred = expected(widget, 3, points=[[20, 30]], point_labels=[1], multimask=True)
    assert want.any() and not want.all(), "the tiny model must give a non-trivial mask for this test to mean something"
    np.testing.assert_array_equal(widget.preview_layer.data[3] != 0, want)
    others = [i for i in range(6) if i != 3]
    np.testing.assert_array_equal(widget.preview_layer.data[others], before[others])
    # the console sees the same prompt in the session the widget uses
    p = widget.session.prompts[widget.obj_id][3]
    np.testing.assert_allclose(p.points, [[30, 20]])  # SAM's (x, y)
    assert len(pred.masks) == 3

    # a negative click: one decoder call with both points, on that slice only
    click(widget, [3, 40, 10], positive=False)
    want2, _ = expected(widget, 3, points=[[20, 30], [40, 10]], point_labels=[1, 0])
    np.testing.assert_array_equal(widget.preview_layer.data[3] != 0, want2)
    assert list(widget.points_layer.features["label"]) == ["positive", "negative"]
    colors = widget.points_layer.face_color
    assert not np.allclose(colors[0], colors[1])

    # deleting the last point brings back the single-click prediction
    widget.points_layer.selected_data = {1}
    widget.points_layer.remove_selected()
    widget.wait()
    np.testing.assert_array_equal(widget.preview_layer.data[3] != 0, want)


def test_cycle_candidates(make_widget, sam2_model, nuclei):
    viewer, widget, _ = make_widget(nuclei[0], sam2_model)
    viewer.dims.set_current_step(0, 2)
    click(widget, [2, 24, 32])
    pred = widget.session.predict(2, points=[[24, 32]], point_labels=[1], multimask=True)
    order = np.argsort(-pred.scores, kind="stable")
    seen = []
    for _ in range(3):
        seen.append(widget.preview_layer.data[2] != 0)
        widget.cycle_candidate()
    for k, mask in zip(order, seen):
        np.testing.assert_array_equal(mask, pred.masks[k])
    assert "IoU" in widget.status_label.text()
    # the chosen candidate is what propagation will start from: back at the best one, the click itself
    cond = widget.session.prompts[widget.obj_id][2]
    assert cond.mask is None and cond.points is not None
    widget.cycle_candidate()  # another candidate: propagation starts from its mask
    np.testing.assert_array_equal(widget.session.prompts[widget.obj_id][2].mask, seen[1])
    assert widget.annotation.objects[widget.obj_id].candidate[2] == 1


def test_box_prompt(make_widget, sam2_model, nuclei):
    viewer, widget, _ = make_widget(nuclei[0], sam2_model)
    viewer.dims.set_current_step(0, 4)
    rect = np.array([[4, 10, 12], [4, 10, 40], [4, 30, 40], [4, 30, 12]], float)
    widget.boxes_layer.add_rectangles(rect)
    widget.wait()
    want, _ = expected(widget, 4, box=[10, 12, 30, 40])
    np.testing.assert_array_equal(widget.preview_layer.data[4] != 0, want)
    assert not widget.preview_layer.data[[0, 1, 2, 3, 5]].any()
    np.testing.assert_allclose(widget.session.prompts[widget.obj_id][4].box, [12, 10, 40, 30])


def test_scaled_layer_uses_data_coordinates(make_widget, sam2_model, nuclei):
    viewer, widget, layer = make_widget(nuclei[0], sam2_model, scale=(3.0, 0.5, 0.5), translate=(10, 5, 5))
    assert tuple(widget.points_layer.scale) == (3.0, 0.5, 0.5)
    viewer.dims.set_point(0, 10 + 3 * 2)  # world z of slice 2
    assert widget.current_index() == 2
    click(widget, [2, 20, 30])  # data coordinates of the points layer = image data coordinates
    want, _ = expected(widget, 2, points=[[20, 30]], point_labels=[1])
    np.testing.assert_array_equal(widget.preview_layer.data[2] != 0, want)
    assert tuple(widget.preview_layer.scale) == (3.0, 0.5, 0.5)
    assert tuple(widget.preview_layer.translate) == (10, 5, 5)


def test_2d_image_and_sam1(make_widget, sam1_model, nuclei):
    image = nuclei[0][3]
    viewer, widget, _ = make_widget(image, sam1_model)
    assert widget.session.shape == (1, 48, 64)
    click(widget, [20, 30])
    want, _ = expected(widget, 0, points=[[20, 30]], point_labels=[1])
    np.testing.assert_array_equal(widget.preview_layer.data != 0, want)
    # SAM 1 cannot propagate: a warning notification, no exception, nothing written
    widget.propagate()
    assert "SAM 2" in widget.status_label.text()
    assert widget._task is None


def test_rgb_layer_and_channel(make_widget, sam2_model, nuclei):
    rgb = np.stack([nuclei[0], nuclei[0][::-1], np.zeros_like(nuclei[0])], -1)
    rgb = (rgb / rgb.max() * 255).astype(np.uint8)
    viewer, widget, layer = make_widget(rgb, sam2_model, rgb=True)
    assert widget.session.shape == (6, 48, 64)
    assert widget.preview_layer.data.shape == (6, 48, 64)
    viewer.dims.set_current_step(0, 1)
    click(widget, [1, 20, 30])
    from napari_sam_stack import Session

    ref = Session(rgb, sam2_model, axis=0, in_memory=True)
    np.testing.assert_array_equal(ref.frames[1], rgb[1])
    want = ref.predict(1, points=[[20, 30]], point_labels=[1])
    np.testing.assert_array_equal(widget.preview_layer.data[1] != 0, want.masks[int(np.argmax(want.scores))])
    widget.set_channel(1)  # green only: a new session on grey frames of channel 1
    np.testing.assert_array_equal(widget.session.frames[2][..., 0], rgb[2, ..., 1])
    widget.wait()  # the existing click is answered again by the new session
    green = Session(rgb, sam2_model, axis=0, channel_axis=-1, channel=1, in_memory=True)
    want = green.predict(1, points=[[20, 30]], point_labels=[1])
    np.testing.assert_array_equal(widget.preview_layer.data[1] != 0, want.masks[int(np.argmax(want.scores))])


def test_4d_fixes_the_other_axis(make_widget, sam2_model, nuclei):
    stack = np.stack([nuclei[0], nuclei[0][:, ::-1]])  # (T=2, Z=6, Y, X)
    viewer, widget, layer = make_widget(stack, sam2_model)
    viewer.dims.set_current_step(0, 1)
    viewer.dims.set_current_step(1, 2)
    widget.set_axis(1)  # walk z at t = 1
    s = widget.session
    assert s.shape == (6, 48, 64) and s.frames.fixed == {0: 1}
    click(widget, [1, 2, 20, 30])
    want, _ = expected(widget, 2, points=[[20, 30]], point_labels=[1])
    np.testing.assert_array_equal(widget.preview_layer.data[1, 2] != 0, want)
    assert not widget.preview_layer.data[0].any()
    # commit lands at t = 1 only
    widget.commit()
    target = widget.target_layer
    assert target.data.shape == stack.shape
    np.testing.assert_array_equal(target.data[1, 2] == 1, want)
    assert not target.data[0].any()
    # moving along the fixed axis makes a new session for t = 0; the prompt layers stay
    points = widget.points_layer
    viewer.dims.set_current_step(0, 0)
    click(widget, [0, 2, 20, 30])
    assert widget.points_layer is points and widget.session.frames.fixed == {0: 0}
    want0 = widget.session.predict(2, points=[[20, 30]], point_labels=[1])
    np.testing.assert_array_equal(widget.preview_layer.data[0, 2] != 0, want0.masks[int(np.argmax(want0.scores))])


def test_fast_clicks_show_only_the_newest_result(make_widget, sam2_model, nuclei):
    viewer, widget, _ = make_widget(nuclei[0], sam2_model)
    viewer.dims.set_current_step(0, 1)
    applied = []
    original = widget._on_prediction  # what shows an answered prompt
    widget._on_prediction = lambda i, p: (applied.append(p), original(i, p))
    widget.points_layer.add([1, 20, 30])
    widget.points_layer.add([1, 30, 40])  # before the first answer reached the GUI thread
    widget.wait()
    want, pred = expected(widget, 1, points=[[20, 30], [30, 40]], point_labels=[1, 1])
    assert len(applied) == 1  # the answer to the one-point prompt was stale and dropped
    np.testing.assert_array_equal(applied[0].masks, pred.masks)
    np.testing.assert_array_equal(widget.preview_layer.data[1] != 0, want)


def test_moving_a_point_updates_the_preview(make_widget, sam2_model, nuclei):
    viewer, widget, _ = make_widget(nuclei[0], sam2_model)
    viewer.dims.set_current_step(0, 5)
    click(widget, [5, 20, 30])
    moved = np.array([[5, 35, 12]], float)
    widget.points_layer.data = moved
    widget.wait()
    want, _ = expected(widget, 5, points=[[35, 12]], point_labels=[1])
    np.testing.assert_array_equal(widget.preview_layer.data[5] != 0, want)
    np.testing.assert_allclose(widget.session.prompts[widget.obj_id][5].points, [[12, 35]])


def test_2d_rgb_layer(make_widget, sam2_model, nuclei):
    rgb = np.stack([nuclei[0][2]] * 3, -1)
    rgb = (rgb / rgb.max() * 255).astype(np.uint8)
    viewer, widget, _ = make_widget(rgb, sam2_model, rgb=True)
    assert widget.session.shape == (1, 48, 64) and widget.preview_layer.data.shape == (48, 64)
    click(widget, [20, 30])
    want, _ = expected(widget, 0, points=[[20, 30]], point_labels=[1])
    np.testing.assert_array_equal(widget.preview_layer.data != 0, want)
    widget.commit()
    np.testing.assert_array_equal(widget.target_layer.data == 1, want)


def test_model_imports_after_the_viewer_opened_do_not_crash():
    """napari first, models later (the plugin's normal order) must not segfault on Mesa OpenGL + Triton."""
    import subprocess
    import sys

    code = (
        "import numpy as np, napari\n"
        "v = napari.Viewer(show=False); v.add_image(np.zeros((4, 8, 8)))\n"
        "from napari_sam_stack._widget import SamStackWidget\n"
        "w = SamStackWidget(v)\n"
        "import torchvision.ops, segment_anything, sam2.build_sam\n"
        "v.close(); print('imports ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "imports ok" in r.stdout, r.stderr[-3000:]


def test_plugin_menu_path_with_the_sample(make_napari_viewer, sam2_model):
    """What a user does: open the sample and the widget through napari's plugin manager."""
    viewer = make_napari_viewer()
    viewer.open_sample("napari-sam-stack", "nuclei_real")
    _, widget = viewer.window.add_plugin_dock_widget("napari-sam-stack", "Segment Anything (stack)")
    assert widget.image_layer.name == "nuclei (stardist)"  # napari hands the widget a public-only viewer proxy
    widget.set_model(sam2_model)
    assert widget.session.shape == (31, 61, 57)
    viewer.dims.set_current_step(0, 15)
    click(widget, [15, 30, 28])
    want, _ = expected(widget, 15, points=[[30, 28]], point_labels=[1])
    np.testing.assert_array_equal(widget.preview_layer.data[15] != 0, want)
    assert not widget.preview_layer.data[:15].any() and not widget.preview_layer.data[16:].any()


def test_deleted_prompt_layer_comes_back(make_widget, sam2_model, nuclei):
    viewer, widget, _ = make_widget(nuclei[0], sam2_model)
    viewer.dims.set_current_step(0, 1)
    click(widget, [1, 20, 30])
    preview = widget.preview_layer.data[1].copy()
    viewer.layers.remove(widget.points_layer)
    widget.clear_object()
    assert widget.points_layer in viewer.layers and len(widget.points_layer.data) == 0
    assert not widget.preview_layer.data.any()
    click(widget, [1, 20, 30])
    np.testing.assert_array_equal(widget.preview_layer.data[1], preview)


def test_recommit_with_overwrite_replaces_the_object_exactly(make_widget, sam2_model, nuclei):
    viewer, widget, _ = make_widget(nuclei[0], sam2_model)
    existing = np.zeros(nuclei[0].shape, np.uint16)
    existing[3, 10:13, 10:13] = 5
    target = viewer.add_labels(existing.copy(), name="labels")
    widget.target_layer = target
    target.selected_label = 5
    viewer.dims.set_current_step(0, 3)
    widget.edit_label()
    new = np.zeros(nuclei[0].shape, bool)
    new[3, 11:14, 11:14] = True  # the refined object overlaps the old one on 2x2 pixels
    widget.annotation.add_prompt(5, 3, mask=new[3])  # (a console script refining it)
    np.testing.assert_array_equal(widget.preview_layer.data == 5, new)
    widget.overwrite_check.setChecked(True)
    widget.commit()
    np.testing.assert_array_equal(target.data == 5, new)
    assert set(np.unique(target.data)) == {0, 5}
    target.undo()  # ONE Ctrl+Z brings the old version back
    np.testing.assert_array_equal(target.data, existing)


def test_closing_the_dock_unbinds_every_key(make_widget, sam2_model, nuclei, qtbot):
    from qtpy.QtCore import QCoreApplication, QEvent, Qt

    viewer, widget, _ = make_widget(nuclei[0], sam2_model)
    viewer.dims.set_current_step(0, 1)
    click(widget, [1, 20, 30])
    layers = [widget.points_layer, widget.boxes_layer, widget.preview_layer]
    own = lambda target: [f for f in target.keymap.values() if getattr(f, "__name__", "").startswith("sam_stack_")]  # noqa: E731
    assert all(own(t) for t in [viewer, *layers])
    viewer.window.remove_dock_widget(widget)  # what the dock's close button does
    for target in [viewer, *layers]:
        assert not own(target), target
    widget.deleteLater()
    QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
    viewer.layers.selection.active = layers[0]
    qtbot.keyClick(viewer.window._qt_viewer.canvas.native, Qt.Key.Key_C, Qt.KeyboardModifier.ShiftModifier)
    assert not any(lay.name == "SAM labels" for lay in viewer.layers)  # no commit, no error
    n = len(viewer.layers)
    viewer.add_image(nuclei[0][0], name="another image")  # the closed widget makes no layers
    assert len(viewer.layers) == n + 1


def test_session_is_built_off_the_main_thread(make_widget, sam2_model, nuclei, monkeypatch):
    """Building a session reads slices (percentiles, cache signature): never on the GUI thread."""
    import threading

    from napari_sam_stack.session import Session

    on_main = []
    original = Session.__init__

    def init(self, *args, **kw):
        on_main.append(threading.current_thread() is threading.main_thread())
        original(self, *args, **kw)

    monkeypatch.setattr(Session, "__init__", init)
    viewer, widget, _ = make_widget(nuclei[0], sam2_model)
    viewer.dims.set_current_step(0, 3)
    widget.points_layer.add([3, 20, 30])  # clicked while the session may still be in the making
    widget.wait()
    widget.contrast_combo.setCurrentIndex(1)  # the layer's contrast limits: a new session
    assert widget.points_layer.data.shape == (1, 3)  # the prompt stays while the session is built
    widget.compute_embeddings()  # asked for before the session is there: the task waits for it
    widget.wait()
    assert on_main == [False, False]
    assert widget.view.contrast == "layer"
    assert all(widget.session.embeddings.is_computed(i) for i in range(6))
    want, _ = expected(widget, 3, points=[[20, 30]], point_labels=[1])
    np.testing.assert_array_equal(widget.preview_layer.data[3] != 0, want)
    assert on_main == [False, False]  # the console's widget.session is the one already built


def test_plugin_menu_widget_never_offers_its_own_layers_as_target(make_napari_viewer, sam2_model, nuclei):
    """Docked from the Plugins menu the widget sees proxies of its layers: it knows them by their tag."""
    viewer = make_napari_viewer()
    viewer.add_image(nuclei[0], name="img")
    _, widget = viewer.window.add_plugin_dock_widget("napari-sam-stack", "Segment Anything (stack)")
    widget.set_model(sam2_model)
    viewer.dims.set_current_step(0, 3)
    click(widget, [3, 20, 30])
    names = [widget.target_combo.itemText(i) for i in range(widget.target_combo.count())]
    assert names == ["new layer"]
    obj = widget.preview_layer.data != 0
    assert obj.any()
    widget.commit()
    names = [widget.target_combo.itemText(i) for i in range(widget.target_combo.count())]
    assert names == ["new layer", "SAM labels"] and widget.target_layer.name == "SAM labels"
    np.testing.assert_array_equal(viewer.layers["SAM labels"].data == 1, obj)
    assert widget.obj_id == 2


def test_4d_moving_the_fixed_axis_keeps_the_object_for_propagate_and_commit(make_widget, sam2_model, nuclei):
    """At t=2: click, propagate; move to t=1; commit still writes the t=2 result (nothing is discarded)."""
    img = nuclei[0]
    stack = np.stack([img, img[:, ::-1], img[:, :, ::-1]])  # (T=3, Z=6, Y, X)
    viewer, widget, layer = make_widget(stack, sam2_model)
    viewer.dims.set_current_step(0, 2)
    viewer.dims.set_current_step(1, 2)
    widget.set_axis(1)
    click(widget, [2, 2, 20, 30])
    viewer.dims.set_current_step(0, 1)  # the user looks at another time point
    widget.propagate()
    widget.wait()
    assert widget.object_session.frames.fixed == {0: 2}
    obj = widget.preview_layer.data[2] != 0
    assert obj[2].any() and (obj.sum(axis=(1, 2)) > 0).sum() >= 2
    widget.commit()
    target = widget.target_layer
    np.testing.assert_array_equal(target.data[2] == 1, obj)
    assert not target.data[:2].any()
    # a click at t = 1 does start a new object there
    click(widget, [1, 2, 20, 30])
    assert widget.session.frames.fixed == {0: 1} and widget.preview_layer.data[1, 2].any()


def test_layer_contrast_limits_follow_the_layer(make_widget, sam2_model, nuclei, qtbot):
    """In "layer contrast limits" mode, changing the layer's contrast makes a session with the new limits."""
    viewer, widget, layer = make_widget(nuclei[0], sam2_model)
    widget.contrast_combo.setCurrentIndex(1)
    viewer.dims.set_current_step(0, 3)
    click(widget, [3, 20, 30])
    old, old_view = widget.session, widget.view
    lo, hi = (float(c) for c in layer.contrast_limits)
    layer.contrast_limits = (lo, lo + (hi - lo) / 4)
    qtbot.waitUntil(lambda: widget.view is not old_view, timeout=5000)
    widget.wait()
    s = widget.session
    assert s is not old
    np.testing.assert_allclose(np.ravel(s.frames.contrast_limits), [lo, lo + (hi - lo) / 4])
    # the click is answered again with the new contrast
    want = s.predict(3, points=[[20, 30]], point_labels=[1])
    np.testing.assert_array_equal(widget.preview_layer.data[3] != 0, want.masks[int(np.argmax(want.scores))])
