"""Segment-everything: 2D equals the official automatic mask generators (candidates and records) on
the cached embedding; instances are painted without overlap; 3D seeds objects from key slices and
propagates them; bad input gives our errors and leaves the labels alone.

Random weights give logits within about +-0.3 around 0 and predicted IoUs of 0..0.55, so the
official thresholds keep nothing. Loosened here (the same values for ours and the official):
``stability_score_offset`` 0.02 (1.0 makes every stability 0), ``mask_threshold`` 0.05 (SAM 1:
``Sam.mask_threshold``, which its generator reads), ``pred_iou_thresh`` / ``stability_score_thresh``
at values that drop some candidates but keep many, and ``box_nms_thresh`` 1.0 in one case (random
masks are speckles spanning the whole slice, so their boxes coincide and NMS keeps one).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from napari_sam_stack import automatic
from napari_sam_stack._amg import Cut, MaskSet, point_batch, resize_to_slice, slice_masks
from napari_sam_stack.errors import AutomaticError, ModelFamilyError, PromptError
from napari_sam_stack.session import Session

ROWS, COLS = 45, 71
ATOL = 1e-4
MASK_THRESHOLD = 0.05
LOOSE = {"stability_score_offset": 0.02, "mask_threshold": MASK_THRESHOLD}


@pytest.fixture(scope="module")
def image2d():
    return np.random.default_rng(0).integers(0, 256, (ROWS, COLS), dtype=np.uint8)


@pytest.fixture(params=["sam", "sam2"])
def model(request):
    yield from _with_threshold(request.getfixturevalue("sam1_model" if request.param == "sam" else "sam2_model"))


def _with_threshold(m):
    """The model, with SAM 1's ``mask_threshold`` (which SamAutomaticMaskGenerator reads) loosened."""
    if m.family == "sam":
        old = m.module.mask_threshold
        m.module.mask_threshold = MASK_THRESHOLD
        try:
            yield m
        finally:
            m.module.mask_threshold = old
    else:
        yield m


def _official(model, **kw):
    if model.family == "sam":
        from segment_anything import SamAutomaticMaskGenerator

        kw.pop("mask_threshold", None)
        return SamAutomaticMaskGenerator(model.module, **kw)
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    g = SAM2AutomaticMaskGenerator(model.module, **kw)
    s = model.image_size  # the predictor hard-codes feature sizes for 1024
    g.predictor._bb_feat_sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]
    return g


def _session(image, model):
    return Session(image, model, axis=None, in_memory=True)


# ---------------------------------------------------------------- 2D equivalence


@pytest.mark.parametrize("family, multimask", [("sam", True), ("sam2", True), ("sam2", False)])
def test_candidates_equal_official(image2d, request, family, multimask):
    """Before any filtering: every grid point's candidates (full-resolution logits, predicted IoU).
    (``multimask=False`` is SAM 2's ``multimask_output`` option; SAM 1's generator always asks for three.)"""
    model = request.getfixturevalue("sam1_model" if family == "sam" else "sam2_model")
    s = _session(image2d, model)
    emb = s.embeddings.get(0)
    pts = np.stack(np.meshgrid(np.linspace(2.5, COLS - 3, 4), np.linspace(1.5, ROWS - 2, 3)), -1).reshape(-1, 2)
    rgb = s.frames[0]
    with torch.inference_mode():
        iou, low = point_batch(model, emb, pts, multimask)
        full = resize_to_slice(model, emb, low(torch.ones_like(iou, dtype=torch.bool)).float())
        g = _official(model, points_per_side=4, multimask_output=multimask) if model.family == "sam2" else _official(
            model, points_per_side=4)
        g.predictor.set_image(rgb)
        labels = torch.ones(len(pts), 1, dtype=torch.int)
        if model.family == "sam":
            coords = torch.as_tensor(g.predictor.transform.apply_coords(pts, (ROWS, COLS)))[:, None]
            F, S, _ = g.predictor.predict_torch(coords, labels, multimask_output=True, return_logits=True)
        else:
            coords = g.predictor._transforms.transform_coords(torch.as_tensor(pts, dtype=torch.float32)[:, None],
                                                               normalize=True, orig_hw=(ROWS, COLS))
            F, S, _ = g.predictor._predict(coords, labels, multimask_output=multimask, return_logits=True)
    assert iou.shape == S.shape == (len(pts), 3 if multimask else 1)
    np.testing.assert_allclose(iou.numpy(), S.numpy(), atol=ATOL, rtol=0)
    np.testing.assert_allclose(full.numpy(), F.flatten(0, 1).numpy(), atol=ATOL, rtol=0)
    assert (F > MASK_THRESHOLD).any() and (F <= MASK_THRESHOLD).any()  # masks that are neither empty nor full


CASES = {
    "thresholds": {"points_per_side": 6, "points_per_batch": 16, "box_nms_thresh": 1.0},
    "nms+crops": {"points_per_side": 4, "points_per_batch": 7, "crop_n_layers": 1, "box_nms_thresh": 0.7,
                  "crop_overlap_ratio": 0.3},
}
IOU_THRESH = {"sam": 0.05, "sam2": 0.5}  # random weights: SAM 1's IoUs spread 0..0.35, SAM 2's 0.43..0.56
STABILITY_THRESH = {"sam": 0.15, "sam2": 0.55}


def _records(model, data: MaskSet):
    return [{"point": tuple(p), "iou": i, "stab": st, "box": tuple(b), "mask": data.mask(k, (ROWS, COLS))}
            for k, (p, i, st, b) in enumerate(zip(data.points, data.iou, data.stability, data.boxes))]


def _assert_same(ours: MaskSet, ref: list[dict]):
    assert len(ours) == len(ref) > 0
    for k, r in enumerate(ref):  # the same order: both NMS runs see the same scores in the same order
        np.testing.assert_allclose(ours.points[k], r["point_coords"][0], atol=1e-4)
        assert ours.iou[k] == pytest.approx(r["predicted_iou"], abs=ATOL)
        assert ours.stability[k] == pytest.approx(r["stability_score"], abs=1e-3)
        x0, y0, x1, y1 = ours.boxes[k]
        assert [x0, y0, x1 - x0, y1 - y0] == [int(v) for v in r["bbox"]]
        mask = ours.mask(k, (ROWS, COLS))
        assert (mask != r["segmentation"]).sum() <= 2  # pixels within float noise of the threshold
        assert mask.any()


@pytest.mark.parametrize("case", list(CASES))
def test_records_equal_official(image2d, model, case):
    """After the same (loosened) thresholds: the same masks, scores, boxes and points, in the same order."""
    kw = {**CASES[case], **LOOSE, "pred_iou_thresh": IOU_THRESH[model.family],
          "stability_score_thresh": STABILITY_THRESH[model.family]}
    s = _session(image2d, model)
    p = automatic.Params.make(model, **kw)
    ours = slice_masks(s, 0, p)
    ref = _official(model, **kw).generate(s.frames[0])
    _assert_same(ours, ref)
    if case == "thresholds":  # not vacuous: the thresholds dropped candidates, and many were kept
        assert 10 < len(ours) < 3 * 36
    else:
        assert len(set(map(tuple, ours.crop_boxes))) >= 1


def test_min_region_area_equals_official_sam1(image2d, sam1_model):
    """SAM 1's small-region post-processing (holes and islands, then NMS preferring unchanged masks);
    the official one needs OpenCV (opencv-python-headless, in the test extra)."""
    kw = {"points_per_side": 4, "points_per_batch": 16, "box_nms_thresh": 1.0, "pred_iou_thresh": 0.05,
          "stability_score_thresh": 0.15, "stability_score_offset": 0.02, "min_mask_region_area": 6}
    for m in _with_threshold(sam1_model):
        s = _session(image2d, m)
        ours = slice_masks(s, 0, automatic.Params.make(m, **kw))
        ref = _official(m, **kw).generate(s.frames[0])
        plain = slice_masks(s, 0, automatic.Params.make(m, **{**kw, "min_mask_region_area": 0}))
    _assert_same(ours, ref)
    changed = sum((ours.mask(k, (ROWS, COLS)) != plain.mask(k, (ROWS, COLS))).any() for k in range(len(ours)))
    assert changed > 0  # the post-processing did change masks


# ---------------------------------------------------------------- cached embeddings, painting


def test_generate_runs_on_the_cached_embedding(image2d, sam2_model):
    s = _session(image2d, sam2_model)
    s.compute_embeddings()
    calls = []
    hook = sam2_model.module.image_encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        kw = {"points_per_side": 4, **LOOSE, "pred_iou_thresh": 0.5, "stability_score_thresh": 0.5,
              "box_nms_thresh": 1.0}
        labels, records = automatic.generate(s, 0, **kw)
        assert calls == [] and s.embeddings.encoder_calls == 1  # only the compute_embeddings above
        assert len(records) > 0
        automatic.generate(s, 0, crop_n_layers=1, **kw)
        assert len(calls) == 4  # the four crops of layer 1, once each
        automatic.generate(s, 0, crop_n_layers=1, **kw)
        assert len(calls) == 4  # cached
    finally:
        hook.remove()


def test_generate_paints_non_overlapping_records(image2d, model):
    s = _session(image2d, model)
    kw = {"points_per_side": 5, "stability_score_offset": 0.02, "mask_threshold": 0.1, "pred_iou_thresh": 0.0,
          "stability_score_thresh": 0.0, "box_nms_thresh": 1.0, "min_visible_fraction": 0.2}
    labels, records = automatic.generate(s, 0, **kw)
    assert labels.dtype == np.uint32 and labels.shape == (ROWS, COLS)
    assert [r["id"] for r in records] == list(range(1, len(records) + 1)) and len(records) >= 3
    assert set(np.unique(labels)) - {0} == {r["id"] for r in records}
    quality = [r["predicted_iou"] * r["stability_score"] for r in records]
    assert quality == sorted(quality, reverse=True)
    for r in records:
        m = labels == r["id"]
        assert r["area"] == m.sum() and 0.2 * r["mask_area"] <= r["area"] <= r["mask_area"]
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        assert r["bbox"] == (rows[0], cols[0], rows[-1] + 1, cols[-1] + 1)
        assert 0 <= r["point"][0] < ROWS and 0 <= r["point"][1] < COLS


def _mask(shape, r0, c0, r1, c1):
    m = np.zeros(shape, bool)
    m[r0:r1, c0:c1] = True
    return m


def test_painting_rule():
    """Quality first; equal quality: smaller first; a mask mostly taken already is dropped."""
    shape = (20, 30)
    full = [_mask(shape, 0, 0, 10, 10), _mask(shape, 2, 2, 6, 6), _mask(shape, 0, 0, 10, 10),
            _mask(shape, 0, 12, 20, 30), _mask(shape, 0, 0, 12, 12)]
    data = MaskSet(np.zeros((5, 4), np.int64), np.array([0.5, 0.5, 0.9, 0.8, 0.6], np.float32),
                   np.ones(5, np.float32), np.zeros((5, 2)), np.zeros((5, 4), np.int64), [Cut(m, 0, 0) for m in full])
    p = automatic.Params.make(None, max_area_fraction=0.5)
    labels, records = automatic.paint(data, shape, p)
    # mask 2 (0.9) first; mask 3 (0.8, 360 px > half of 600) dropped as too large; mask 4 (0.6)
    # keeps its 44-pixel rim (< half of 144: dropped); masks 0 and 1 (0.5) are inside mask 2 already
    assert [r["mask_area"] for r in records] == [100]
    assert (labels == 1).sum() == 100 and labels.max() == 1
    data.iou[:] = 0.5  # all equal: the smallest first, and it is never erased by the larger ones
    labels, records = automatic.paint(data, shape, automatic.Params.make(None, min_visible_fraction=0.3))
    assert records[0]["mask_area"] == 16 and (labels[2:6, 2:6] == 1).all()
    assert [r["mask_area"] for r in records] == [16, 100, 144, 360]
    assert records[1]["area"] == 84 and records[2]["area"] == 44


def test_nothing_to_find_is_a_clear_empty_result(sam2_model):
    flat = np.full((ROWS, COLS), 7, np.uint16)
    s = _session(flat, sam2_model)
    with pytest.warns(automatic.NothingFoundWarning, match="constant"):
        labels, records = automatic.generate(s, 0)
    assert records == [] and labels.shape == (ROWS, COLS) and not labels.any()
    assert s.embeddings.encoder_calls == 0
    noise = np.random.default_rng(3).integers(0, 256, (ROWS, COLS), dtype=np.uint8)
    with pytest.warns(automatic.NothingFoundWarning, match="thresholds"):
        labels, records = automatic.generate(_session(noise, sam2_model), 0, points_per_side=2)
    assert records == [] and not labels.any()


@pytest.mark.parametrize("bad", [
    {"points_per_side": 0}, {"points_per_side": 2.5}, {"points_per_batch": True}, {"pred_iou_thresh": 1.5},
    {"stability_score_thresh": -0.1}, {"stability_score_thresh": "0.9"}, {"box_nms_thresh": float("nan")},
    {"crop_n_layers": -1}, {"crop_overlap_ratio": 1.0}, {"min_mask_region_area": -5}, {"multimask": 1},
    {"mask_threshold": float("inf")}, {"points_per_side": 4, "crop_n_layers": 1, "crop_n_points_downscale_factor": 8},
    {"not_a_parameter": 1},
])
def test_bad_parameters_raise_before_any_work(image2d, sam2_model, bad):
    s = _session(image2d, sam2_model)
    with pytest.raises(AutomaticError):
        automatic.generate(s, 0, **bad)
    assert s.embeddings.encoder_calls == 0


def test_bad_slice_index(image2d, sam2_model):
    with pytest.raises(PromptError, match="out of range"):
        automatic.generate(_session(image2d, sam2_model), 1)


# ---------------------------------------------------------------- 3D / time

# loosened as above; small islands removed so that instances are blobs, not speckles (SAM 2 sees a mask
# prompt at a quarter of its input size: one-pixel speckles do not survive, blobs do)
FIND = {"points_per_side": 4, "stability_score_offset": 0.02, "mask_threshold": 0.12, "pred_iou_thresh": 0.0,
        "stability_score_thresh": 0.0, "box_nms_thresh": 1.0, "min_visible_fraction": 0.2, "min_mask_region_area": 10}


@pytest.fixture
def annotation(stack_u8, sam2_model):
    from napari_sam_stack.annotation import Annotation

    return Annotation(stack_u8, sam2_model, axis=0, in_memory=True)


def test_3d_is_seeded_by_the_2d_instances(annotation):
    a, k = annotation, 2
    labels2d, records = automatic.generate(a.session, k, **FIND)
    assert len(records) >= 2
    result = a.add_automatic([k], **FIND)
    assert result.obj_ids == list(range(1, len(records) + 1)) == list(a.objects)  # ids kept, in rank order
    assert result.found == {k: len(records)} and result.skipped == {k: 0}
    for o in result.obj_ids:
        key, rec = result.sources[o]
        assert key == k and rec == o
        prompt = a.objects[o].prompts[k]
        np.testing.assert_array_equal(prompt.mask, labels2d == rec)  # seeded by its 2D mask
        assert prompt.points is None and prompt.box is None
        assert a.objects[o].status == "propagated"
        m = a.mask(o, k)  # present on its key slice, as its 2D mask (through SAM 2's mask-as-output)
        inter = (m & prompt.mask).sum()
        assert inter / (m | prompt.mask).sum() > 0.6
    assert any(len(a.objects[o].slices()) == len(a.session) for o in result.obj_ids)  # tracked through the stack
    a.commit(result.obj_ids)
    for z in range(len(a.session)):  # one label per object per slice: each pixel one id, ids of these objects
        ids = set(np.unique(a.labels[z])) - {0}
        assert ids <= set(result.obj_ids)
        for o in ids:
            assert ((a.labels[z] == o) <= a.mask(o, z)).all()


def test_3d_second_key_slice_adds_only_what_is_not_tracked(annotation):
    a = annotation
    labels1, records1 = automatic.generate(a.session, 4, **FIND)
    assert len(records1) >= 2
    tracked = a.new_object()  # an object already covering instance 1 of slice 4
    a.add_prompt(tracked, 4, mask=labels1 == 1)
    result = a.add_automatic([4], **FIND)
    assert result.skipped[4] >= 1 and tracked not in result.obj_ids
    for o in result.obj_ids:  # none of the new ones is more than half covered by the tracked object
        m = a.objects[o].prompts[4].mask
        assert (m & a.mask(tracked, 4)).sum() <= 0.5 * m.sum()

    before = set(a.objects)
    covered = {k: automatic.Automatic(a, [k], **FIND).covered(k) for k in (1,)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", automatic.NothingFoundWarning)  # when all of them are tracked already
        more = a.add_automatic([1], **FIND)  # a second key slice, after the first propagation
    assert more.found[1] >= 1 and set(a.objects) == before | set(more.obj_ids)
    assert more.found[1] == len(more.obj_ids) + more.skipped[1]
    for o in more.obj_ids:
        m = a.objects[o].prompts[1].mask
        assert (m & covered[1]).sum() <= 0.5 * m.sum()  # the overlap rule: not a duplicate of a tracked one


def test_3d_max_absent_propagates_as_annotation_propagate_does(annotation, stack_u8, sam2_model, monkeypatch):
    """``max_absent`` reaches the batched propagation: the objects equal those seeded by hand from the
    same 2D instances and propagated with ``Annotation.propagate(max_absent=1)``."""
    from napari_sam_stack.annotation import Annotation

    seen = []
    real = Annotation.propagate
    monkeypatch.setattr(Annotation, "propagate", lambda self, *a, **kw: seen.append(kw.get("max_absent")) or real(self, *a, **kw))
    result = annotation.add_automatic([2], max_absent=1, **FIND)
    assert result.obj_ids and seen == [1]
    b = Annotation(stack_u8, sam2_model, axis=0, in_memory=True)
    labels2d, records = automatic.generate(b.session, 2, **FIND)
    ids = []
    for rec in records:
        ids.append(b.new_object())
        b.add_prompt(ids[-1], 2, mask=labels2d == rec["id"])
    b.propagate(obj_ids=ids, max_absent=1)
    assert result.obj_ids == ids
    for o in ids:
        assert annotation.objects[o].slices() == b.objects[o].slices()
        for z in b.objects[o].slices():
            np.testing.assert_array_equal(annotation.mask(o, z), b.mask(o, z))


def test_every_kth_slice_and_key_slices_together(annotation):
    auto = automatic.Automatic(annotation, [5], every=3, **FIND)
    assert auto.keys == [0, 3, 5]


def test_3d_bad_input_leaves_the_annotation_alone(annotation, stack_u8, sam1_model):
    from napari_sam_stack.annotation import Annotation

    a = annotation
    labels = a.labels.copy()
    for bad in ({"key_slices": [6]}, {"key_slices": [-1]}, {"key_slices": None}, {"key_slices": [1], "every": 0},
                {"key_slices": [1.5]}, {"key_slices": [1], "overlap_thresh": 2}, {"key_slices": [1], "points_per_side": 0},
                {"key_slices": [1], "max_absent": 0}, {"key_slices": [1], "max_absent": 1.5}):
        with pytest.raises(AutomaticError):
            automatic.add_automatic(a, **bad)
    assert not a.objects and np.array_equal(a.labels, labels)
    a1 = Annotation(stack_u8, sam1_model, axis=0, in_memory=True)
    with pytest.raises(ModelFamilyError, match="SAM 2"):
        a1.add_automatic([0])
    assert not a1.objects and not a1.labels.any() and a1.session.embeddings.encoder_calls == 0


def test_3d_nothing_found_warns_and_adds_nothing(annotation):
    with pytest.warns(automatic.NothingFoundWarning):
        result = annotation.add_automatic([0], points_per_side=2)  # official thresholds: random weights pass none
    assert result.obj_ids == [] and not annotation.objects and not annotation.labels.any()


def test_run_is_one_call_for_2d_and_3d(annotation):
    labels, records = automatic.run(annotation.session, 3, **FIND)
    assert labels.shape == annotation.session.shape[1:] and records
    result = automatic.run(annotation, key_slices=[3], commit=True, **FIND)
    assert result.obj_ids and set(np.unique(annotation.labels)) - {0} <= set(result.obj_ids)
    with pytest.raises(AutomaticError):
        automatic.run(annotation.session, key_slices=[3])
    with pytest.raises(AutomaticError):
        automatic.run(annotation, 3, key_slices=[3])


def test_defaults_are_microscopy_unless_the_registry_entry_sets_its_own():
    import dataclasses

    from napari_sam_stack import models
    from napari_sam_stack.errors import CheckpointError

    assert automatic.defaults(None) == automatic.defaults("sam2.1_hiera_tiny") == automatic.MICROSCOPY
    micro = automatic.defaults("nss_nuclei_micro")
    assert micro == {**automatic.MICROSCOPY, **models.model_spec("nss_nuclei_micro").automatic} != automatic.MICROSCOPY
    automatic.Params.make(**micro)  # valid parameters
    bad = dataclasses.replace(models.model_spec("nss_nuclei_micro"), name="lab_model", automatic={"pred_iou": 0.5})
    with pytest.raises(CheckpointError, match="pred_iou"):
        models.register_model(bad)
    assert "lab_model" not in models.available_models()
