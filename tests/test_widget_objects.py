"""GUI tests of the whole annotation job in the widget (issue 11): many objects, the objects panel,
propagate all, commit all, revisit an object, delete, undo, save / open / autosave, the reader.

Real widget in a real viewer (Xvfb), tiny random-weight SAM 2 loaded through the real loader.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_widget import click, make_widget  # noqa: F401  (fixture)
from test_widget_stack import notes  # noqa: F401  (fixture)

from napari_sam_stack.testing import synthetic_nuclei

pytestmark = pytest.mark.gui

CLICKS = [(1, 14, 16), (2, 30, 44), (4, 20, 30), (5, 36, 14), (6, 12, 50)]  # 5 objects on different slices
TOL = 1e-3  # |logit| below this may flip a pixel between two float-equal runs


@pytest.fixture
def stack():
    return synthetic_nuclei(shape=(8, 48, 64), n_nuclei=5, seed=7)[0]


def annotate(widget, viewer, clicks, lead=()):
    """One object per click (slice, row, col), each its own id; ``lead``: fixed leading coordinates (4D)."""
    ids = []
    for z, r, c in clicks:
        viewer.dims.set_current_step(len(lead), z)
        click(widget, [*lead, z, r, c])
        ids.append(widget.obj_id)
        widget.next_object()
    return ids


def solo_logits(session, obj_ids):
    """{obj: {slice: logits}} of each object propagated alone (the official multi-object semantics per object)."""
    out = {}
    for o in obj_ids:
        out[o] = {}
        for i, logits in session.iter_propagate(obj_ids=[o]):
            out[o][i] = np.asarray(logits[o])
    return out


def test_five_objects_revisit_one_undo_and_delete(make_widget, sam2_model, stack, qtbot):
    from qtpy.QtCore import Qt

    viewer, widget, _ = make_widget(stack, sam2_model)
    ids = annotate(widget, viewer, CLICKS)
    a = widget.annotation
    assert ids == [1, 2, 3, 4, 5] and list(a.objects) == ids
    assert widget.objects_panel.ids() == ids
    assert set(widget.objects_panel.statuses().values()) == {"draft"}
    # propagate all: one batched run; each object's result equals that object propagated alone
    widget.propagate_all()
    assert widget._task_kind == "propagate all"
    widget.wait()
    solo = solo_logits(a.session, ids)
    for o in ids:
        obj = a.objects[o]
        assert obj.status == "propagated" and obj.slices() == sorted(solo[o]) == list(range(8))
        for i, logits in solo[o].items():
            got = a.mask(o, i) if a.mask(o, i) is not None else np.zeros(logits.shape, bool)
            wrong = got != (logits > 0)
            assert not wrong.any() or np.abs(logits[wrong]).max() < TOL, f"object {o}, slice {i}"
    assert "not committed" in widget.objects_panel.summary.text()
    # commit all: ONE undo step
    widget.commit_all()
    target = widget.target_layer
    assert target.data is not None and len(target._undo_history) == 1
    committed = {o for o in ids if a.objects[o].status == "committed"}
    assert 2 in committed and len(committed) >= 3
    assert set(np.unique(target.data)) - {0} == committed
    before = target.data.copy()
    # select object 2: its prompt comes back on its slice, the viewer jumps there
    viewer.dims.set_current_step(0, 7)
    widget.objects_panel.table.selectRow(widget.objects_panel.ids().index(2))
    assert widget.obj_id == 2 and widget.current_index() == 2
    np.testing.assert_allclose(widget.points_layer.data, [[2, 30, 44]])
    # a negative click on another slice, propagate it alone, re-commit: only object 2's pixels change
    viewer.dims.set_current_step(0, 5)
    click(widget, [5, 38, 10], positive=False)
    assert a.objects[2].status == "edited" and a.objects[2].prompted() == [2, 5]
    assert widget.objects_panel.statuses()[2] == "edited"
    others = {o: a.objects[o].masks.slices() for o in ids if o != 2}
    widget.propagate()
    assert widget._task_kind == "propagate"
    widget.wait()
    assert {o: a.objects[o].masks.slices() for o in ids if o != 2} == others
    widget.select_object(2)
    widget.commit()
    after = target.data
    changed = before != after
    assert changed.any()
    assert np.isin(before[changed], [0, 2]).all() and np.isin(after[changed], [0, 2]).all()
    assert len(target._undo_history) == 2
    viewer.layers.selection.active = widget.points_layer  # Ctrl+Z where the user is
    qtbot.keyClick(viewer.window._qt_viewer.canvas.native, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    np.testing.assert_array_equal(target.data, before)
    # delete an object: its pixels go (one undo step), undo brings them and the object back
    victim = max(committed - {2})
    widget.delete_object(victim)
    assert not (target.data == victim).any() and victim not in a.objects
    assert victim not in widget.objects_panel.ids()
    widget.undo_button.click()
    np.testing.assert_array_equal(target.data, before)
    assert victim in a.objects and a.objects[victim].status == "committed"
    assert victim in widget.objects_panel.ids()


def test_select_object_shows_its_prompts_on_their_slices(make_widget, sam2_model, stack):
    viewer, widget, _ = make_widget(stack, sam2_model)
    annotate(widget, viewer, CLICKS[:2])
    viewer.dims.set_current_step(0, 6)
    click(widget, [6, 20, 20])  # object 3: two prompted slices (6 and 3, one with a box)
    viewer.dims.set_current_step(0, 3)
    widget.boxes_layer.add_rectangles(np.array([[3, 10, 10], [3, 10, 30], [3, 25, 30], [3, 25, 10]], float))
    widget.wait()
    assert widget.annotation.objects[3].prompted() == [3, 6]
    widget.select_object(1)
    assert len(widget.points_layer.data) == 1 and len(widget.boxes_layer.data) == 0
    assert widget.current_index() == 1
    widget.select_object(3)  # back: its points and its box, the viewer on its first prompted slice
    np.testing.assert_allclose(widget.points_layer.data, [[6, 20, 20]])
    np.testing.assert_allclose(widget.points_layer.face_color[0], [0, 1, 0, 1])  # positive: lime
    assert len(widget.boxes_layer.data) == 1 and widget.current_index() == 3
    np.testing.assert_allclose(np.asarray(widget.boxes_layer.data[0])[:, 1:].min(0), [10, 10])
    # nothing was sent again: the prompts are what they were
    assert widget.annotation.objects[3].version == 2


def test_save_close_open_in_a_new_viewer(make_widget, sam2_model, stack, tmp_path):
    viewer, widget, _ = make_widget(stack, sam2_model)
    ids = annotate(widget, viewer, CLICKS[:3])
    widget.propagate_all()
    widget.wait()
    widget.select_object(1)
    widget.commit()
    path = widget.save_project(tmp_path / "nuclei.sam")
    a = widget.annotation
    labels = widget.target_layer.data.copy()
    prompts = {o: {i: (p.points.copy(), p.labels.copy()) for i, p in a.objects[o].prompts.items()} for o in ids}
    statuses = {o: a.objects[o].status for o in ids}
    viewer.close()

    viewer2, widget2, _ = make_widget(stack, sam2_model)
    b = widget2.open_project(path)
    assert b is widget2.annotation and list(b.objects) == ids
    np.testing.assert_array_equal(widget2.target_layer.data, labels)
    assert widget2.target_layer.data is b.labels or np.shares_memory(widget2.target_layer.data, b.labels)
    assert {o: b.objects[o].status for o in ids} == statuses
    for o in ids:
        got = {i: (p.points, p.labels) for i, p in b.objects[o].prompts.items()}
        assert got.keys() == prompts[o].keys()
        for i in got:
            np.testing.assert_array_equal(got[i][0], prompts[o][i][0])
            np.testing.assert_array_equal(got[i][1], prompts[o][i][1])
    assert widget2.objects_panel.ids() == ids
    # propagate again: the same labels
    widget2.propagate_all()
    widget2.wait()
    widget2.commit_all()
    again = widget2.target_layer.data.copy()
    ref = a  # the first session's annotation, propagated and committed the same way
    ref.propagate()
    ref.commit()
    np.testing.assert_array_equal(again, ref.labels)


def test_saving_onto_another_project_and_opening_with_another_model_ask_first(make_widget, sam2_model, stack,
                                                                              tmp_path, model_dir, monkeypatch):
    """No Python keyword in a message the user cannot act on: the widget asks, and does what the answer says."""
    from napari_sam_stack.testing import load_tiny_sam2

    viewer, widget, _ = make_widget(stack, sam2_model)
    annotate(widget, viewer, CLICKS[:1])
    first = widget.save_project(tmp_path / "first.sam")
    widget.next_object()
    annotate(widget, viewer, CLICKS[1:2])
    asked, answer = [], [False]
    monkeypatch.setattr(type(widget), "confirm", lambda self, q: asked.append(q) or answer[0])
    from napari_sam_stack import Annotation

    other = Annotation.open(first, image=stack, model=sam2_model).save(tmp_path / "other.sam")
    before = sorted(p.name for p in other.iterdir())
    assert widget.save_project(other) is None  # 'no': kept as it was
    assert "another project" in asked[-1] and "kept as it was" in widget.status_label.text()
    assert sorted(p.name for p in other.iterdir()) == before
    assert len(Annotation.open(other, image=stack, model=sam2_model).objects) == 1
    answer[0] = True
    assert widget.save_project(other) == other
    assert len(Annotation.open(other, image=stack, model=sam2_model).objects) == 2
    widget.set_model(load_tiny_sam2(model_dir / "other", seed=1))  # another model: opening asks
    b = widget.open_project(first)
    assert "Continue with the loaded model" in asked[-1] and sorted(b.objects) == [1]
    answer[0] = False
    assert widget.open_project(first) is None
    assert "allow_model_change" not in widget.status_label.text() or "Python" in widget.status_label.text()


def test_another_model_goes_on_with_the_same_objects(make_widget, sam2_model, stack, model_dir):
    """Loading another model (e.g. the one just trained on these labels) keeps every object, its status and
    the current object: no object vanishes from the panel and the current clicks make no duplicate object."""
    from napari_sam_stack.testing import load_tiny_sam2

    viewer, widget, _ = make_widget(stack, sam2_model)
    annotate(widget, viewer, CLICKS[:2])
    widget.select_object(1)
    widget.commit()
    widget.select_object(2)  # object 2 current, its click in the points layer
    before = {o: (obj.status, obj.prompted()) for o, obj in widget.annotation.objects.items()}
    labels = widget.target_layer.data.copy()
    other = load_tiny_sam2(model_dir / "carry", seed=3)
    widget.set_model(other)
    widget.wait()
    a = widget.annotation
    assert a.session.model is other and widget.obj_id == 2
    assert {o: (obj.status, obj.prompted()) for o, obj in a.objects.items()} == before
    assert widget.objects_panel.ids() == [1, 2]
    np.testing.assert_array_equal(widget.target_layer.data, labels)
    viewer.dims.set_current_step(0, CLICKS[2][0])
    click(widget, list(CLICKS[2]))  # more work with the new model, then back to the first one: it goes on too
    widget.set_model(sam2_model)
    widget.wait()
    assert widget.annotation.session.model is sam2_model and 2 in widget.annotation.objects
    assert len(widget.annotation.objects[2].prompted()) == 2


def test_changed_image_and_corrupt_project_are_refused(make_widget, sam2_model, stack, tmp_path, notes):
    viewer, widget, _ = make_widget(stack, sam2_model)
    annotate(widget, viewer, CLICKS[:1])
    widget.select_object(1)
    widget.commit()
    path = widget.save_project(tmp_path / "p.sam")
    other = stack.copy()
    other[3, 5, 5] += 100
    viewer2, widget2, _ = make_widget(other, sam2_model)
    n_layers = len(viewer2.layers)
    assert widget2.open_project(path) is None
    assert notes[-1][0] == "error" and "the image changed" in notes[-1][1]
    assert "\n" not in widget2.status_label.text() and "image changed" in widget2.status_label.text()
    assert len(viewer2.layers) == n_layers
    # a truncated project: a clear error, the labels layer untouched
    target = widget.target_layer
    before = target.data.copy()
    arrays = path / "arrays.npz"
    arrays.write_bytes(arrays.read_bytes()[: arrays.stat().st_size // 2])
    n_layers = len(viewer.layers)
    assert widget.open_project(path) is None
    assert notes[-1][0] == "error" and "damaged" in notes[-1][1]
    np.testing.assert_array_equal(target.data, before)
    assert len(viewer.layers) == n_layers and widget.target_layer is target


def test_autosave_is_offered_when_the_image_is_opened_again(make_widget, sam2_model, stack, notes, qtbot):
    viewer, widget, _ = make_widget(stack, sam2_model)
    assert not widget.restore_button.isVisibleTo(widget)
    annotate(widget, viewer, CLICKS[:2])
    widget.select_object(2)
    widget.commit()  # autosaved after the commit
    labels = widget.target_layer.data.copy()
    assert widget.autosave_now(force=True) is not None  # the timer's call (objects changed since)
    told = lambda: sum("Restore autosave" in msg for _, msg in notes)  # noqa: E731
    viewer.close()  # removing its layers one by one makes fresh annotations: a closing viewer offers nothing
    qtbot.wait(50)
    assert told() == 0

    viewer2, widget2, _ = make_widget(stack, sam2_model)  # as after a crash: the same image again
    widget2.wait()
    _ = widget2.annotation
    assert widget2.restore_button.isVisibleTo(widget2)
    qtbot.wait(50)
    assert told() == 1
    b = widget2.restore_autosave()
    assert sorted(b.objects) == [1, 2] and b.objects[2].status == "committed"
    np.testing.assert_array_equal(widget2.target_layer.data, labels)
    assert not widget2.restore_button.isVisibleTo(widget2)


def test_opening_a_project_offers_only_its_own_later_autosave_until_work_goes_on(make_widget, sam2_model, stack,
                                                                                   tmp_path, notes, qtbot):
    """Work on the same image that is not this project (a session that never opened it) is not offered as
    the project's continuation; work after opening it is; the offer ends once the user works on."""
    viewer, widget, _ = make_widget(stack, sam2_model)
    annotate(widget, viewer, CLICKS[:1])
    widget.select_object(1)
    widget.commit()
    path = widget.save_project(tmp_path / "job.sam")
    viewer.close()
    viewer, widget, _ = make_widget(stack, sam2_model)  # other work on this image, never saved: autosaved
    annotate(widget, viewer, CLICKS[3:4])
    widget.select_object(widget.obj_id - 1)
    widget.commit()
    viewer.close()
    viewer, widget, _ = make_widget(stack, sam2_model)
    b = widget.open_project(path)
    assert sorted(b.objects) == [1] and not widget.restore_button.isVisibleTo(widget)
    annotate(widget, viewer, CLICKS[1:2])  # work on the project after opening it, autosaved on commit
    widget.select_object(2)
    widget.commit()
    viewer.close()
    viewer, widget, _ = make_widget(stack, sam2_model)
    widget.open_project(path)
    assert widget.restore_button.isVisibleTo(widget)
    qtbot.wait(50)
    widget.wait()
    assert sum("Restore autosave" in m for _, m in notes) >= 1
    told = sum("Restore autosave" in m for _, m in notes)
    annotate(widget, viewer, CLICKS[2:3])  # working on: the offer is over
    assert not widget.restore_button.isVisibleTo(widget)
    qtbot.wait(50)
    assert sum("Restore autosave" in m for _, m in notes) == told


def test_napari_opens_a_project_folder(make_napari_viewer, sam2_model, stack, tmp_path):
    import tifffile

    from napari_sam_stack._widget import SamStackWidget

    tif = tmp_path / "nuclei.tif"
    tifffile.imwrite(tif, stack)
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(tif))
    widget = SamStackWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.image_layer = layer
    widget.set_model(sam2_model)
    annotate(widget, viewer, CLICKS[:2])
    widget.select_object(1)
    widget.commit()
    path = widget.save_project(tmp_path / "job.sam")
    labels = widget.target_layer.data.copy()
    viewer.close()

    viewer2 = make_napari_viewer()
    layers = viewer2.open(str(path), plugin="napari-sam-stack")
    image, lab = layers
    np.testing.assert_array_equal(image.data, stack)
    np.testing.assert_array_equal(lab.data, labels)
    widget2 = SamStackWidget(viewer2)  # docked: with a model, the project's objects come back onto that layer
    viewer2.window.add_dock_widget(widget2)
    widget2.image_layer = image
    widget2.set_model(sam2_model)
    widget2.wait()
    assert widget2.target_layer is lab or widget2.target_layer.name == lab.name
    assert sorted(widget2.annotation.objects) == [1, 2]
    assert widget2.annotation.objects[1].status == "committed"
    np.testing.assert_array_equal(widget2.target_layer.data, labels)
    assert not widget2.restore_button.isVisibleTo(widget2)  # the autosaves are older than the project
    # work goes on and is autosaved, not saved: opening the project again offers the newer autosave
    widget2.select_object(2)
    widget2.commit()
    widget2.autosave_now(force=True)  # (a commit autosaves already)
    viewer2.close()
    viewer3 = make_napari_viewer()
    image3, lab3 = viewer3.open(str(path), plugin="napari-sam-stack")
    widget3 = SamStackWidget(viewer3)
    viewer3.window.add_dock_widget(widget3)
    widget3.image_layer = image3
    widget3.set_model(sam2_model)
    widget3.wait()
    assert widget3.annotation.objects[2].status != "committed"  # the project as saved
    assert widget3.restore_button.isVisibleTo(widget3)
    b = widget3.restore_autosave()
    assert all(o.status == "committed" for o in b.objects.values()) and sorted(b.objects) == [1, 2]


@pytest.mark.parametrize("kind", ["time series", "4D"])
def test_time_series_and_4d_behave_the_same(make_widget, sam2_model, stack, kind, tmp_path, qtbot):
    if kind == "time series":
        viewer, widget, _ = make_widget(stack, sam2_model, axis_labels=("t", "y", "x"))
        lead = ()
    else:
        viewer, widget, _ = make_widget(np.stack([stack[:, ::-1], stack]), sam2_model)  # (T=2, Z=8, Y, X)
        viewer.dims.set_current_step(0, 1)
        widget.set_axis(1)
        lead = (1,)
    ids = annotate(widget, viewer, CLICKS[:3], lead)
    widget.propagate_all()
    widget.wait()
    widget.commit_all()
    target = widget.target_layer
    committed = sorted(set(np.unique(target.data)) - {0})
    assert committed and set(committed) <= set(ids)
    if lead:
        assert not target.data[0].any()  # t = 0 untouched
    before = target.data.copy()
    victim = committed[-1]
    widget.delete_object(victim)
    assert not (target.data == victim).any()
    widget.undo_labels()
    np.testing.assert_array_equal(target.data, before)
    path = widget.save_project(tmp_path / f"{kind}.sam")
    widget.objects_panel.table.selectRow(0)
    assert widget.obj_id == ids[0] and widget.current_index() == CLICKS[0][0]
    b = widget.open_project(path)
    np.testing.assert_array_equal(widget.target_layer.data, before)
    assert sorted(b.objects) == ids


def test_stop_after_absent_reaches_the_run(make_widget, sam2_model, stack, monkeypatch):
    """The widget's 'stop after absent' is the run's max_absent (1 on an unnamed axis, which counts as z;
    off: None); the range is the spin boxes'."""
    from napari_sam_stack.annotation import Annotation

    seen = []
    original = Annotation.propagation

    def propagation(self, *args, **kw):
        seen.append(kw)
        return original(self, *args, **kw)

    monkeypatch.setattr(Annotation, "propagation", propagation)
    viewer, widget, _ = make_widget(stack, sam2_model)
    annotate(widget, viewer, CLICKS[:2])
    widget.propagate_all()
    widget.wait()
    widget.absent_spin.setValue(2)
    widget.start_spin.setValue(1)
    widget.stop_spin.setValue(5)
    widget.propagate_all()
    widget.wait()
    widget.absent_spin.setValue(0)
    widget.propagate_all()
    widget.wait()
    assert [(k["max_absent"], k["start"], k["stop"]) for k in seen] == [(1, 0, 7), (2, 1, 5), (None, 1, 5)]
    assert "propagated over 5 slice(s)" in widget.status_label.text()


def test_stop_after_absent_starts_on_for_z_off_for_t_until_set(make_widget, sam2_model, stack):
    """A z-stack starts with 'stop after absent' 1 (a nucleus ends), a time series with it off (an object
    missed on one frame is still there); once the user sets it, changing image or axis keeps their value."""
    viewer, widget, _ = make_widget(stack, sam2_model, axis_labels=("z", "y", "x"))
    assert widget.absent_spin.value() == 1
    movie = viewer.add_image(stack, name="movie", axis_labels=("t", "y", "x"))
    widget.image_layer = movie
    assert widget.absent_spin.value() == 0 and widget.absent_spin.text() == "off"
    widget.image_layer = viewer.layers[0]
    assert widget.absent_spin.value() == 1
    widget.absent_spin.setValue(3)  # the user's choice
    widget.image_layer = movie
    assert widget.absent_spin.value() == 3


def test_leaving_an_image_and_coming_back_finds_its_objects_and_labels(make_widget, sam2_model, stack):
    """Back on an image, its labels layer is the target again and its objects are there: the next commit
    goes on with the next id into the same layer (it used to start a second 'SAM labels' at id 1)."""
    from napari.layers import Labels

    viewer, widget, layer = make_widget(stack, sam2_model)
    ids = annotate(widget, viewer, CLICKS[:2])
    widget.commit_all()
    widget.wait()
    a, target = widget.annotation, widget.target_layer
    assert target is not None and set(np.unique(target.data)) - {0} == set(ids)
    other = viewer.add_image(stack[:, :40], name="other")  # another shape: commits there go to a new layer
    widget.image_layer = other
    assert widget.target_layer is None
    widget.image_layer = layer
    assert widget.target_layer is target and widget.annotation is a
    assert widget.objects_panel.ids() == ids and widget.obj_id not in ids
    viewer.dims.set_current_step(0, 3)
    click(widget, [3, 24, 30])
    new = widget.obj_id
    widget.commit()
    widget.wait()
    assert [lay for lay in viewer.layers if isinstance(lay, Labels) and lay.name.startswith("SAM labels")] == [target]
    assert set(np.unique(target.data)) - {0} == {*ids, new}


def test_loading_the_model_in_use_again_keeps_the_objects(make_widget, stack):
    from napari_sam_stack import load_model

    model = load_model("nss_nuclei_micro", device="cpu")
    viewer, widget, _ = make_widget(stack, model)
    ids = annotate(widget, viewer, CLICKS[:1])
    widget.commit()
    widget.wait()
    a = widget.annotation
    assert widget.model_combo.currentText() == "nss_nuclei_micro"
    widget.load_model()  # pressed again
    widget.wait()
    assert widget.model is model and widget.annotation is a and widget.objects_panel.ids() == ids
    assert "loaded already" in widget.status_label.text()
