"""Annotation: many objects on one stack, statuses, commit/overlap rule, delete, undo, propagation.

Random-weight tiny SAM 2 (tests/conftest.py) loaded through the real loader.
"""

from __future__ import annotations

import numpy as np
import pytest

import napari_sam_stack as nss
from napari_sam_stack._masks import MaskStack, commit_edit, confidence
from napari_sam_stack.annotation import Status
from napari_sam_stack.errors import AnnotationError, ModelFamilyError, PromptError


@pytest.fixture(scope="module")
def stack():
    from napari_sam_stack.testing import synthetic_nuclei

    return synthetic_nuclei((6, 48, 64), n_nuclei=5, seed=3)


def new(stack, model, **kw):
    return nss.Annotation(stack[0], model, axis=0, in_memory=True, **kw)


def rect(shape, r0, r1, c0, c1):
    m = np.zeros(shape, bool)
    m[r0:r1, c0:c1] = True
    return m


def pixels(labels, i):
    return set(map(tuple, np.argwhere(labels == i)))


def test_five_objects_refine_one_recommit_delete(stack, sam2_model):
    a = new(stack, sam2_model)
    ids = []
    for k, z in enumerate((0, 1, 2, 3, 5)):
        i = a.new_object()
        a.add_prompt(i, z, points=[[10 + 6 * k, 12 + 9 * k]], point_labels=[1])
        ids.append(i)
    assert ids == [1, 2, 3, 4, 5]
    assert [a.objects[i].prompted() for i in ids] == [[0], [1], [2], [3], [5]]
    assert a.propagate() == ids
    assert all(a.objects[i].status == Status.PROPAGATED for i in ids)
    edit = a.commit()
    assert set(edit.obj_ids) == set(ids) and len(edit) > 0
    assert all(a.objects[i].status == Status.COMMITTED for i in ids)
    assert set(np.unique(a.labels)) - {0} == set(ids)
    before = a.labels.copy()

    # object 2 again: a negative click on another slice, propagate it alone, re-commit
    a.add_prompt(2, 4, points=[[30, 40]], point_labels=[0])
    assert a.objects[2].status == Status.EDITED
    assert a.objects[2].prompted() == [1, 4]
    assert a.propagate([2]) == [2]
    assert a.objects[2].status == Status.EDITED
    assert [a.objects[i].status for i in (1, 3, 4, 5)] == [Status.COMMITTED] * 4
    edit = a.commit([2])
    changed = a.labels != before
    assert changed.any()
    assert set(np.unique(before[changed])) | set(np.unique(a.labels[changed])) <= {0, 2}
    for i in (1, 3, 4, 5):
        assert np.array_equal(a.labels == i, before == i)
    # only object 2's pixels: its new pixels are its mask where no other label was
    for z in range(len(a.session)):
        m = a.mask(2, z)
        others = (before[z] != 0) & (before[z] != 2)
        want = np.zeros_like(others) if m is None else m & ~others
        assert np.array_equal(a.labels[z] == 2, want), z
    # the edit undoes exactly
    undo = a.labels.copy()
    undo[edit.indices] = edit.old
    assert np.array_equal(undo, before)
    # undoing the re-commit in napari: object 2's pixels are its old version again -> edited
    a.labels_writer(edit.inverse())
    a.sync_labels()
    assert a.objects[2].status == Status.EDITED and np.array_equal(a.labels, before)
    assert [a.objects[i].status for i in (1, 3, 4, 5)] == [Status.COMMITTED] * 4
    a.labels_writer(edit)  # redo
    a.sync_labels()
    assert a.objects[2].status == Status.COMMITTED
    z, r, c = map(int, np.argwhere(a.labels == 1)[0])
    a.labels[z, r, c] = 0  # erasing a pixel by hand
    a.sync_labels()
    assert a.objects[1].status == Status.EDITED
    a.commit([1])
    assert a.labels[z, r, c] == 1 and a.objects[1].status == Status.COMMITTED

    d = a.delete(2)
    assert not (a.labels == 2).any() and 2 not in a.objects
    assert set(np.unique(d.old)) == {2}
    assert a.new_object() == 6  # never reuses a committed id, nor a deleted one


def test_statuses_and_undo_sync(stack, sam2_model):
    a = new(stack, sam2_model)
    seen = []
    a.events.status_changed.connect(lambda i, s: seen.append((i, s)))
    i = a.new_object()
    assert a.objects[i].status == Status.DRAFT
    a.add_prompt(i, 3, box=[10, 10, 30, 40])
    assert a.objects[i].status == Status.DRAFT and a.objects[i].slices() == [3]
    a.propagate(start=2, stop=5)
    assert a.objects[i].status == Status.PROPAGATED
    assert set(a.objects[i].slices()) <= {2, 3, 4, 5}
    edit = a.commit()
    assert a.objects[i].status == Status.COMMITTED
    a.propagate(start=2, stop=5)  # the same prompts give the same masks: still committed
    assert a.objects[i].status == Status.COMMITTED
    a.add_prompt(i, 4, points=[[20, 20]])
    assert a.objects[i].status == Status.EDITED
    a.remove_prompt(i, 4)
    assert a.objects[i].status == Status.EDITED and 4 in a.objects[i].slices()  # its mask stays
    a.remove_prompt(i, 1)  # no prompt there: nothing happens
    edit2 = a.commit()
    assert a.objects[i].status == Status.COMMITTED
    # undo both commits in "napari", then sync
    a.labels[...] = 0
    a.sync_labels()
    assert a.objects[i].status == Status.DRAFT  # masks came from a 2D prompt change after the propagation
    a.labels[edit.indices] = edit.values  # redo the first commit: pixels of an older version of the masks
    a.sync_labels()
    assert a.objects[i].status == Status.EDITED
    a.labels[edit2.indices] = edit2.values  # redo the second
    a.sync_labels()
    assert a.objects[i].status == Status.COMMITTED
    assert seen[:3] == [(i, Status.PROPAGATED), (i, Status.COMMITTED), (i, Status.EDITED)]
    assert seen[-2:] == [(i, Status.EDITED), (i, Status.COMMITTED)]


def test_delete_then_undo_brings_the_object_back(stack, sam2_model):
    a = new(stack, sam2_model)
    i = a.new_object()
    a.add_prompt(i, 1, mask=rect((48, 64), 5, 20, 5, 30))
    a.commit()
    removed = []
    added = []
    a.events.object_removed.connect(removed.append)
    a.events.object_added.connect(added.append)
    d = a.delete(i)
    assert removed == [i] and i not in a.session.prompts
    a.labels[d.indices] = d.old  # napari's undo
    a.sync_labels()
    assert added == [i] and a.objects[i].status == Status.COMMITTED
    assert a.objects[i].prompted() == [1] and i in a.session.prompts


def test_ids_never_reused(stack, sam2_model):
    labels = np.zeros((6, 48, 64), np.uint32)
    labels[0, :3, :3] = 7
    a = new(stack, sam2_model, labels=labels)
    assert a.labels is labels
    assert a.new_object() == 8
    j = a.new_object()
    assert j == 9
    a.add_prompt(j, 2, mask=rect((48, 64), 0, 5, 0, 5))
    a.commit([j])
    a.delete(j)
    assert a.new_object() == 10
    with pytest.raises(AnnotationError, match="exists already"):
        a.new_object(8)
    # adopting a label without an object: committed, its pixels are its masks
    assert a.new_object(7) == 7
    assert a.objects[7].status == Status.COMMITTED and a.objects[7].slices() == [0]
    assert a.mask(7, 0).sum() == 9


def test_overlap_rule(stack, sam2_model):
    a = new(stack, sam2_model)
    shape = (48, 64)
    p = a.new_object()
    a.add_prompt(p, 2, mask=rect(shape, 0, 20, 0, 20))
    a.commit()
    q = a.new_object()
    a.add_prompt(q, 2, mask=rect(shape, 10, 30, 10, 30))
    a.commit([q])
    assert (a.labels[2] == p).sum() == 400  # p's pixels are never overwritten ...
    assert (a.labels[2] == q).sum() == 400 - 100
    a.commit([q], overwrite=True)  # ... unless asked
    assert (a.labels[2] == q).sum() == 400 and (a.labels[2] == p).sum() == 300
    # re-committing p with a smaller mask: exactly its old pixels not in the new mask become 0
    a.add_prompt(p, 2, mask=rect(shape, 0, 5, 0, 5))
    a.commit([p])
    assert (a.labels[2] == p).sum() == 25 and (a.labels[2] == q).sum() == 400
    assert a.labels[2].astype(bool).sum() == 425
    # an object wholly on other labels writes nothing, is not committed, and says so
    r = a.new_object()
    a.add_prompt(r, 2, mask=rect(shape, 12, 18, 12, 18))
    with pytest.warns(UserWarning, match="nothing written"):
        a.commit([r])
    assert a.objects[r].status == Status.DRAFT


def test_commit_overlaps_go_to_the_highest_logit():
    shape = (6, 8)
    la = np.full(shape, -1.0, np.float32)
    lb = np.full(shape, -1.0, np.float32)
    la[:, :6] = 2.0  # a covers cols 0..5
    lb[:, 3:] = 1.0  # b covers 3..7, weaker where they overlap ...
    lb[:2, 3:6] = 5.0  # ... except rows 0..1
    sa, sb = MaskStack(shape), MaskStack(shape)
    sa.set(0, confidence(la))
    sb.set(0, confidence(lb))
    labels = np.zeros((1, *shape), np.uint32)
    labels[0, 5, 7] = 9  # another label: stays
    edit = commit_edit(labels, {1: sa, 2: sb})
    labels[edit.indices] = edit.values
    want = np.zeros(shape, np.uint32)
    want[:, :6] = 1
    want[:, 6:] = 2
    want[:2, 3:6] = 2
    want[5, 7] = 9
    assert np.array_equal(labels[0], want)


def test_commit_overlaps_go_to_the_object_prompted_nearest():
    """A track that drifted onto its neighbour (prompted 3 slices away, high logit) loses the pixels
    to the neighbour prompted on this slice; as near, the highest logit decides again."""
    shape = (6, 8)
    la = np.full(shape, -1.0, np.float32)
    lb = np.full(shape, -1.0, np.float32)
    la[:, :6] = 9.0  # a: strong, covers cols 0..5
    lb[:, 3:] = 1.0  # b: weak, covers 3..7
    sa, sb = MaskStack(shape), MaskStack(shape)
    for z in (0, 1):
        sa.set(z, confidence(la))
        sb.set(z, confidence(lb))
    labels = np.zeros((2, *shape), np.uint32)
    edit = commit_edit(labels, {1: sa, 2: sb}, anchors={1: [4], 2: [1]})
    labels[edit.indices] = edit.values
    assert (labels[1, :, 3:] == 2).all() and (labels[1, :, :3] == 1).all()  # slice 1: b prompted here wins
    assert (labels[0, :, 3:6] == 2).all()  # slice 0: b 1 away, a 4 away
    edit = commit_edit(np.zeros((2, *shape), np.uint32), {1: sa, 2: sb}, anchors={1: [1], 2: [1]})
    assert set(np.unique(edit.values[(edit.indices[2] >= 3) & (edit.indices[2] < 6)])) == {1}  # as near: logit


def test_preview_and_commit_use_the_prompt_distance(stack, sam2_model):
    a = new(stack, sam2_model)
    shape = (48, 64)
    p, q = a.new_object(), a.new_object()
    a.add_prompt(p, 0, mask=rect(shape, 0, 20, 0, 20))
    a.add_prompt(q, 3, mask=rect(shape, 10, 30, 10, 30))
    for z in (1, 2):  # both tracks reach slices 1 and 2 (as propagation would leave them)
        a.objects[p].masks.set(z, confidence(np.where(rect(shape, 0, 20, 0, 20), 9.0, -1.0)))
        a.objects[q].masks.set(z, confidence(np.where(rect(shape, 10, 30, 10, 30), 1.0, -1.0)))
    assert a.anchors([p, q]) == {p: [0], q: [3]}
    assert (a.preview_labels(1)[10:20, 10:20] == p).all()  # p prompted 1 away, q 2 away
    assert (a.preview_labels(2)[10:20, 10:20] == q).all()  # q 1 away: wins over p's higher logit
    a.commit()
    assert (a.labels[1, 10:20, 10:20] == p).all() and (a.labels[2, 10:20, 10:20] == q).all()


def test_bad_inputs_raise_and_leave_labels_untouched(stack, sam2_model):
    a = new(stack, sam2_model)
    i = a.new_object()
    a.add_prompt(i, 1, points=[[20, 20]])
    a.commit()
    before = a.labels.copy()
    state = {o: (x.status, x.prompted()) for o, x in a.objects.items()}
    bad = [
        lambda: a.add_prompt(99, 1, points=[[1, 1]]),
        lambda: a.add_prompt("1", 1, points=[[1, 1]]),
        lambda: a.add_prompt(True, 1, points=[[1, 1]]),
        lambda: a.add_prompt(0, 1, points=[[1, 1]]),
        lambda: a.commit([99]),
        lambda: a.commit([]),
        lambda: a.commit(),  # nothing left to commit
        lambda: a.commit("abc"),
        lambda: a.delete(42),
        lambda: a.delete(-1),
        lambda: a.propagate([99]),
        lambda: a.propagate([i], max_absent=0),
        lambda: a.propagate([i], start=5, stop=2),
        lambda: a.set_candidate(i, 1, 7),
        lambda: a.set_candidate(i, 1, "1"),
        lambda: a.commit([i], overwrite="yes"),
        lambda: a.propagate([i], max_absent=1.5),
        lambda: nss.Annotation(stack[0], sam2_model, in_memory=True, autosave_every=-1),
        lambda: nss.Annotation(stack[0], sam2_model, in_memory=True, autosave="on"),
        lambda: nss.Annotation(a.session, None, in_memory=True),  # a Session brings its own options
        lambda: nss.Annotation.from_session("not a session"),
        lambda: a.predict(i, 4),
        lambda: a.mask(123, 0),
        lambda: a.commit([a.new_object()]),  # no mask
        lambda: nss.Annotation(stack[0], sam2_model, in_memory=True, labels=np.zeros((3, 3), np.uint32)),
        lambda: nss.Annotation(stack[0], sam2_model, in_memory=True, labels=np.zeros((6, 48, 64), np.float32)),
    ]
    for call in bad:
        with pytest.raises(AnnotationError):
            call()
    for call in (lambda: a.add_prompt(i, 1, points=[[200, 20]]), lambda: a.add_prompt(i, 10, points=[[2, 2]]),
                 lambda: a.add_prompt(i, 1), lambda: a.propagate([i], start=11)):
        with pytest.raises(PromptError):
            call()
    assert np.array_equal(a.labels, before)
    assert {o: (x.status, x.prompted()) for o, x in a.objects.items() if o in state} == state


def test_propagate_all_equals_each_object_alone(stack, sam2_model):
    """Batching changes speed, never numbers: every object's masks of a.propagate() equal those of
    a.propagate([o]) (quantised logits, within one step: float rounding around 0)."""
    a = new(stack, sam2_model)
    for k, z in enumerate((0, 2, 4)):
        i = a.new_object()
        a.add_prompt(i, z, points=[[12 + 10 * k, 15 + 12 * k]])
    a.add_prompt(2, 5, points=[[30, 30], [5, 5]], point_labels=[1, 0])
    a.propagate()
    together = {o: {z: a.objects[o].masks.confidence(z) for z in range(6)} for o in a.objects}
    for o in list(a.objects):
        a.propagate([o])
        for z in range(6):
            x, y = together[o][z], a.objects[o].masks.confidence(z)
            if x is None or y is None:
                assert x is None and y is None, (o, z)
                continue
            assert np.abs(x.astype(int) - y.astype(int)).max() <= 1, (o, z)


def test_propagation_run_in_two_phases(stack, sam2_model):
    a = new(stack, sam2_model)
    i, j = a.new_object(), a.new_object()
    a.add_prompt(i, 1, points=[[20, 20]])
    a.add_prompt(j, 4, points=[[30, 40]])
    run = a.propagation(progress=lambda d, t: None)
    with pytest.raises(AnnotationError, match="not finished"):
        run.apply()
    seen = set()
    for index, preview in run:
        assert preview.shape == (48, 64) and preview.dtype == np.uint32
        assert set(np.unique(preview)) <= {0, i, j}
        seen.add(index)
    assert seen == set(range(6))
    a.add_prompt(j, 5, points=[[30, 41]])  # j changed meanwhile: its results are stale
    assert run.apply() == [i]
    assert a.objects[i].status == Status.PROPAGATED and a.objects[j].status == Status.DRAFT
    assert a.objects[j].slices() == [4, 5]


def test_cancel_stores_nothing(stack, sam2_model):
    a = new(stack, sam2_model)
    i = a.new_object()
    a.add_prompt(i, 0, points=[[20, 20]])
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(nss.errors.Cancelled):
        a.propagate(cancel=cancel)
    assert a.objects[i].slices() == [0] and a.objects[i].status == Status.DRAFT


def test_candidates_preview_and_writer(stack, sam2_model):
    a = new(stack, sam2_model)
    edits = []

    def writer(edit):
        edits.append(edit)
        a.labels[edit.indices] = edit.values

    a.labels_writer = writer
    i = a.new_object()
    pred = a.add_prompt(i, 3, points=[[24, 30]])
    assert len(pred) == 3  # one click: SAM's three candidates, best first
    assert np.array_equal(a.mask(i, 3), pred.masks[0])
    a.set_candidate(i, 3, 2)
    assert a.objects[i].candidate == {3: 2}
    assert np.array_equal(a.mask(i, 3), pred.masks[2])
    assert a.session.prompts[i][3].mask is not None  # propagation starts from the chosen mask
    assert np.array_equal(a.preview_labels(3) == i, pred.masks[2])
    assert not a.preview_labels(4).any()
    a.commit()
    assert len(edits) == 1 and not a.preview_labels(3).any()
    j = a.new_object()
    a.add_prompt(j, 4, box=[5, 5, 40, 60])
    a.remove_prompt(j, 4, clear_mask=True)
    assert a.objects[j].slices() == [] and j not in a.session.prompts
    assert np.array_equal(a.preview_labels(3, obj_ids=[i]) == i, pred.masks[2])


def test_single_2d_image(sam2_model):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (40, 50), np.uint8)
    labels = np.zeros((40, 50), np.uint32)
    a = nss.Annotation(img, sam2_model, axis=None, in_memory=True, labels=labels)
    assert a.labels.shape == (1, 40, 50)
    i = a.new_object()
    a.add_prompt(i, 0, box=[5, 5, 30, 40])
    a.commit()
    assert np.array_equal(labels == i, a.mask(i, 0))


def test_sam1_annotates_slices_but_does_not_propagate(stack, sam1_model):
    a = new(stack, sam1_model)
    i = a.new_object()
    a.add_prompt(i, 0, points=[[20, 20]])
    a.commit()
    assert (a.labels[0] == i).any()
    with pytest.raises(ModelFamilyError):
        a.propagate()
