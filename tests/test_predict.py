"""2D prediction equals the official predictors (logits at float tolerance), never calls the
encoder once the embedding exists, and rejects bad prompts with clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_sam_stack.errors import PromptError
from napari_sam_stack.predict import Prediction, binary_mask_to_logits, mask_input_side, predict_logits
from napari_sam_stack.prompts import make_prompt
from napari_sam_stack.session import Session

ROWS, COLS = 45, 71  # non-square: a row/col swap cannot hide
ATOL = 1e-4


@pytest.fixture(scope="module")
def image2d():
    rng = np.random.default_rng(7)
    return rng.integers(0, 256, (ROWS, COLS), dtype=np.uint8)


def _rgb(frame):
    return np.ascontiguousarray(np.repeat(frame[..., None], 3, axis=-1))


def _official(model, rgb, sam2_input=None):
    """The official image predictor with ``rgb`` set (SAM 2: feature sizes derived from the model;
    ``sam2_input`` replaces its preprocessing, for frames the video predictor would load)."""
    if model.family == "sam":
        from segment_anything import SamPredictor

        p = SamPredictor(model.module)
        p.set_image(rgb)
        return p
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    p = SAM2ImagePredictor(model.module)
    s = model.image_size
    p._bb_feat_sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]
    transforms = p._transforms
    if sam2_input is not None:
        p._transforms = lambda _img: sam2_input
    p.set_image(rgb)
    p._transforms = transforms
    return p


def _official_predict(pred, prompt, multimask):
    full, scores, low = pred.predict(
        prompt.points, prompt.labels, prompt.box, None if prompt.mask is None else prompt.mask[None],
        multimask_output=multimask, return_logits=True,
    )
    return np.asarray(full, np.float32), np.asarray(scores, np.float32), np.asarray(low, np.float32)


def _check(model, session, index, pred, prompt_kw, multimask):
    """Our predict_logits, full Prediction and the official predictor agree."""
    prompt = make_prompt(session.frames.frame_shape, **prompt_kw)
    emb = session.embeddings.get(index)
    ref_prompt = prompt
    if prompt.mask is not None and not prompt.mask_is_logits:
        logits = binary_mask_to_logits(model, prompt.mask, emb.input_size).numpy()[0, 0]
        ref_prompt = make_prompt(session.frames.frame_shape, **{**prompt_kw, "mask": logits})
    F, S, L = _official_predict(pred, ref_prompt, multimask)
    full, scores, low = predict_logits(model, emb, prompt, multimask)
    assert full.shape == F.shape == (len(S), *session.frames.frame_shape)
    np.testing.assert_allclose(full, F, atol=ATOL, rtol=0)
    np.testing.assert_allclose(scores, S, atol=ATOL, rtol=0)
    np.testing.assert_allclose(low, L, atol=ATOL, rtol=0)

    r = session.predict(index, multimask=multimask, **prompt_kw)
    order = np.argsort(-S, kind="stable")
    assert isinstance(r, Prediction)
    assert r.masks.dtype == bool and r.masks.shape == F.shape
    assert r.logits.dtype == np.float32 and r.logits.shape == L.shape
    np.testing.assert_allclose(r.scores, S[order], atol=ATOL, rtol=0)
    np.testing.assert_allclose(r.logits, L[order], atol=ATOL, rtol=0)
    # masks are thresholded logits; pixels within float noise of 0 may flip
    sure = np.abs(F[order]) > 1e-3
    np.testing.assert_array_equal(r.masks[sure], (F[order] > 0)[sure])
    assert 0 < r.masks.mean() < 1 or len(S) == 0, "vacuous comparison: all pixels on one side of 0"
    return r


POINTS = [[10, 20], [30, 60], [5, 66], [40, 3]]
LABELS = [1, 0, 1, 0]
BOX = [6, 9, 38, 57]  # (row_min, col_min, row_max, col_max)

CASES = {
    "one point": dict(points=[[12, 50]]),
    "points +/-": dict(points=POINTS, point_labels=LABELS),
    "box": dict(box=BOX),
    "box + points": dict(box=BOX, points=POINTS[:2], point_labels=LABELS[:2]),
    # enough tokens that the fast decoder projects the image instead of folding (H*T >= width)
    "many points": dict(points=[[3 * i + 2, 5 * i + 4] for i in range(13)],
                        point_labels=[i % 3 != 0 for i in range(13)]),
}


@pytest.fixture(scope="module", params=["sam", "sam2"])
def model(request):
    return request.getfixturevalue("sam1_model" if request.param == "sam" else "sam2_model")


@pytest.fixture(scope="module")
def single(model, image2d):
    """A 2D Session (axis=None) and the official predictor on the same image."""
    s = Session(image2d, model, axis=None)
    return s, _official(model, _rgb(image2d))


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("multimask", [True, False])
def test_equals_official(model, single, case, multimask):
    s, pred = single
    r = _check(model, s, 0, pred, CASES[case], multimask)
    assert len(r) == (3 if multimask else 1)
    assert list(r.scores) == sorted(r.scores, reverse=True)


def test_mask_prompts_equal_official(model, single):
    """The interactive loop: low-res logits of one click go back in with the next click;
    a binary mask prompt goes in as logits on the decoder's grid."""
    s, pred = single
    first = s.predict(0, points=[[12, 50]])
    for multimask in (False, True):
        refine = dict(points=[[12, 50], [30, 10]], point_labels=[1, 0], mask=first.logits[first.best])
        _check(model, s, 0, pred, refine, multimask)
        _check(model, s, 0, pred, dict(mask=first.logits[0]), multimask)
    _check(model, s, 0, pred, {**CASES["many points"], "mask": first.logits[1]}, False)
    binary = np.zeros((ROWS, COLS), bool)
    binary[10:30, 20:60] = True
    _check(model, s, 0, pred, dict(mask=binary), False)
    _check(model, s, 0, pred, dict(mask=binary, box=BOX), True)


def test_multimask_default_follows_sam(model, single):
    s, _ = single
    assert len(s.predict(0, points=[[12, 50]])) == 3
    assert len(s.predict(0, points=POINTS, point_labels=LABELS)) == 1
    assert len(s.predict(0, points=[[12, 50]], box=BOX)) == 1
    assert len(s.predict(0, box=BOX)) == 1
    assert len(s.predict(0, points=[[12, 50]], multimask=True, box=BOX)) == 3


def test_prediction_select(model, single):
    s, _ = single
    r = s.predict(0, points=[[12, 50]], multimask=True)
    assert r.best == int(np.argmax(r.scores)) == 0
    one = r.select()
    assert len(one) == 1 and one.masks.shape == (1, ROWS, COLS) and one.logits.shape[0] == 1
    np.testing.assert_array_equal(one.masks[0], r.mask)
    last = r.select(2)
    np.testing.assert_array_equal(last.logits[0], r.logits[2])
    with pytest.raises(IndexError):
        r.select(3)


def _video_frame_input(model, frame_rgb, tmp_path):
    """A frame as SAM2VideoPredictor loads it (its own loader on a lossless file, then mean/std)."""
    from PIL import Image
    from sam2.utils.misc import _load_img_as_tensor

    path = tmp_path / "frame.png"
    Image.fromarray(frame_rgb).save(path)
    img, _, _ = _load_img_as_tensor(str(path), model.image_size)
    mean = torch.tensor((0.485, 0.456, 0.406))[:, None, None]
    std = torch.tensor((0.229, 0.224, 0.225))[:, None, None]
    return (img.float() - mean) / std  # the loader stores frames in a float32 tensor


def test_slice_of_stack_equals_official(model, stack_u8, tmp_path):
    s = Session(stack_u8, model, axis=0)
    k = 3
    rgb = _rgb(stack_u8[k])
    sam2_input = _video_frame_input(model, rgb, tmp_path) if model.family == "sam2" else None
    pred = _official(model, rgb, sam2_input)
    for other in (0, 5, 1):  # per-slice decoder state of other slices must not leak into slice k
        s.predict(other, points=[[20, 30]])
    _check(model, s, k, pred, CASES["points +/-"], False)
    r = _check(model, s, k, pred, CASES["one point"], True)
    _check(model, s, k, pred, dict(points=[[20, 30]], mask=r.logits[0]), False)


def test_no_encoder_call_during_predict(model, stack_u8):
    s = Session(stack_u8[:2], model, axis=0)
    s.compute_embeddings()
    calls = []
    hook = model.module.image_encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        for i in range(len(s)):
            r = s.predict(i, points=[[5, 7]])
            s.predict(i, points=[[5, 7], [20, 40]], point_labels=[1, 0], mask=r.logits[0], box=[1, 2, 30, 60])
    finally:
        hook.remove()
    assert calls == []


def test_binary_mask_logits(model):
    """Full mask -> +10 on the image's part of the decoder grid, -10 on SAM 1's padding."""
    side = mask_input_side(model)
    full = np.ones((ROWS, COLS), bool)
    lg = binary_mask_to_logits(model, full).numpy()[0, 0]
    assert lg.shape == (side, side)
    if model.family == "sam2":
        np.testing.assert_allclose(lg, 10.0, atol=1e-4)
    else:  # longest side (cols) fills the grid; rows cover 45/71 of it, then padding
        rows_in = side * ROWS / COLS
        assert np.allclose(lg[: int(rows_in) - 1], 10.0, atol=1e-4)
        assert np.allclose(lg[int(np.ceil(rows_in)) + 1 :], -10.0, atol=1e-4)
    # a block in the top-left quadrant of the slice stays there (no row/col swap)
    block = np.zeros((ROWS, COLS), bool)
    block[: ROWS // 2, : COLS // 2] = True
    lg = binary_mask_to_logits(model, block).numpy()[0, 0]
    ys, xs = np.nonzero(lg > 0)
    rows_frac = 1.0 if model.family == "sam2" else ROWS / COLS
    y_edge = side * rows_frac * (ROWS // 2) / ROWS
    x_edge = side * (COLS // 2) / COLS
    assert abs(ys.max() + 1 - y_edge) < 1.5 and abs(xs.max() + 1 - x_edge) < 1.5


BAD = {
    "point outside": (dict(points=[[ROWS + 3, 5]]), "outside"),
    "point outside (cols)": (dict(points=[[5, COLS]]), "outside"),
    "negative point": (dict(points=[[-2, 5]]), "outside"),
    "labels mismatch": (dict(points=[[1, 2], [3, 4]], point_labels=[1]), "2 points but 1"),
    "bad label": (dict(points=[[1, 2]], point_labels=[2]), "point_labels"),
    "labels without points": (dict(point_labels=[1]), "without points"),
    "empty prompt": (dict(), "empty prompt"),
    "empty points": (dict(points=np.zeros((0, 2))), "empty prompt"),
    "zero box": (dict(box=[5, 5, 5, 20]), "zero or negative"),
    "negative box": (dict(box=[10, 30, 20, 10]), "zero or negative"),
    "box outside": (dict(box=[0, 0, 50, 20]), "outside"),
    "box wrong size": (dict(box=[0, 0, 5]), "box must be"),
    "NaN point": (dict(points=[[np.nan, 3]]), "NaN"),
    "NaN box": (dict(box=[0, np.nan, 5, 5]), "NaN"),
    "points wrong shape": (dict(points=[[1, 2, 3, 4]]), "points must be"),
    "empty mask": (dict(mask=np.zeros((ROWS, COLS), bool)), "empty"),
    "mask wrong shape": (dict(mask=np.ones((COLS, ROWS), bool)), "mask must be"),
    "logits wrong size": (dict(mask=np.zeros((100, 100), np.float32)), "mask logits must be"),
    "NaN logits": (dict(mask=np.full((256, 256), np.nan, np.float32)), "NaN"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_prompts(model, single, case):
    s, _ = single
    kw, msg = BAD[case]
    with pytest.raises(PromptError, match=msg):
        s.predict(0, **kw)


@pytest.mark.parametrize("index", [1, -1, 0.5, "a"])
def test_bad_index(model, single, index):
    s, _ = single
    with pytest.raises(PromptError, match="slice index"):
        s.predict(index, points=[[1, 2]])


@pytest.mark.parametrize("shape", [(2100, 30), (13, 700)])
def test_elongated_slices_equal_official(model, shape):
    """Very long slices (official interpolation above 2048 px) and short wide ones (matmul upsampling)."""
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, shape, dtype=np.uint8)
    s = Session(img, model, axis=None)
    pred = _official(model, _rgb(img))
    rows, cols = shape
    _check(model, s, 0, pred, dict(points=[[rows // 3, cols // 2], [rows - 2, 1]], point_labels=[1, 0]), True)


def test_half_open_bbox_touching_the_edge_is_a_valid_box():
    """regionprops' bbox / automatic records are half-open: (r0, c0, r1, c1) with r1 = rows at the
    bottom edge. They are accepted unchanged; a corner farther out is still refused."""
    from skimage.measure import regionprops

    mask = np.zeros((ROWS, COLS), np.uint8)
    mask[30:, 50:] = 1  # touches the bottom and right edges
    bbox = regionprops(mask)[0].bbox
    assert bbox == (30, 50, ROWS, COLS)
    p = make_prompt((ROWS, COLS), box=bbox)
    np.testing.assert_array_equal(p.box, [50, 30, COLS, ROWS])
    make_prompt((ROWS, COLS), box=[-1, -1, 5, 5])  # the limit: half a pixel beyond the outer edge
    for bad in ([0, 0, ROWS + 0.5, 5], [-1.5, 0, 5, 5], [0, 0, 5, COLS + 1]):
        with pytest.raises(PromptError, match="outside"):
            make_prompt((ROWS, COLS), box=bad)
