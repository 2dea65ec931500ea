"""Session on real microscopy data (stardist nuclei, uint16, odd sizes) and label assembly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

import napari_sam_stack
from napari_sam_stack import Session
from napari_sam_stack.session import labels_from_logits

DATA = Path(napari_sam_stack.__file__).parent / "data"  # real stardist nuclei, shipped with the package


def test_labels_from_logits_highest_positive_logit_wins():
    a = np.array([[2.0, -1.0, 0.5], [-3.0, 1.0, 4.0]], np.float32)
    b = np.array([[1.0, -2.0, 3.0], [-1.0, 2.0, -5.0]], np.float32)
    out = labels_from_logits({3: a, 7: b}, a.shape, np.uint16)
    np.testing.assert_array_equal(out, [[3, 0, 7], [0, 7, 3]])
    assert out.dtype == np.uint16
    assert not labels_from_logits({}, (2, 3)).any()


def test_labels_from_logits_nearest_prompt_wins_overlaps():
    """Where two tracks claim a pixel, the object prompted nearer the slice wins, whatever its logit;
    equally near objects fall back to the highest logit."""
    a = np.array([[2.0, -1.0, 0.5], [-3.0, 1.0, 4.0]], np.float32)
    b = np.array([[1.0, -2.0, 3.0], [-1.0, 2.0, -5.0]], np.float32)
    # slice 5: object 3 was prompted on slice 4 (1 away), object 7 on slice 9 (4 away)
    out = labels_from_logits({3: a, 7: b}, a.shape, index=5, anchors={3: [4], 7: [9, 0]})
    np.testing.assert_array_equal(out, [[3, 0, 3], [0, 3, 3]])
    # on slice 8 object 7 (prompted on 9) is nearer
    out = labels_from_logits({3: a, 7: b}, a.shape, index=8, anchors={3: [4], 7: [9, 0]})
    np.testing.assert_array_equal(out, [[7, 0, 7], [0, 7, 3]])
    # equally near: highest logit, as without anchors
    out = labels_from_logits({3: a, 7: b}, a.shape, index=5, anchors={3: [3], 7: [7]})
    np.testing.assert_array_equal(out, labels_from_logits({3: a, 7: b}, a.shape))


@pytest.fixture(scope="module")
def nuclei3d():
    return tifffile.imread(DATA / "img3d.tif"), tifffile.imread(DATA / "mask3d.tif")


def _centroid_prompt(mask, obj):
    zz, rr, cc = np.nonzero(mask == obj)
    z = int(np.bincount(zz).argmax())  # the slice where the nucleus is largest
    on = (zz == z)
    return z, [[float(rr[on].mean()), float(cc[on].mean())]]


def test_real_stack_two_nuclei_propagate(nuclei3d, sam2_model):
    """Object 1 from a ground-truth mask, object 2 from a click: ids, slices and coordinates line up."""
    image, truth = nuclei3d
    assert image.dtype == np.uint16 and image.shape == (31, 61, 57)
    s = Session(image, sam2_model, axis=0, in_memory=True)
    assert s.shape == image.shape
    ids, sizes = np.unique(truth, return_counts=True)
    big = [int(o) for o in ids[1:][np.argsort(sizes[1:])[::-1][:2]]]
    z1, _ = _centroid_prompt(truth, big[0])
    s.add_prompt(1, z1, mask=truth[z1] == big[0])
    z2, pts = _centroid_prompt(truth, big[1])
    s.add_prompt(2, z2, points=pts, point_labels=[1])
    seen = []
    for index, logits in s.iter_propagate():
        seen += [(index, o) for o in logits]
        for v in logits.values():
            assert v.shape == image.shape[1:] and v.dtype == np.float32 and np.isfinite(v).all()
    assert sorted(seen) == [(i, o) for i in range(len(image)) for o in (1, 2)]  # every slice and object, once
    labels = s.propagate()
    assert labels.shape == image.shape and set(np.unique(labels)) <= {0, 1, 2}
    # on its prompted slice a mask prompt is SAM 2's output (resampled through the model's grid)
    a, b = labels[z1] == 1, truth[z1] == big[0]
    assert (a & b).sum() / (a | b).sum() > 0.8


def test_real_2d_image_predict(sam2_model):
    image = tifffile.imread(DATA / "img2d.tif")
    truth = tifffile.imread(DATA / "mask2d.tif")
    s = Session(image, sam2_model, axis=None, in_memory=True)
    rr, cc = np.nonzero(truth == truth.max())
    r = s.predict(0, points=[[rr.mean(), cc.mean()]], point_labels=[1])
    low = sam2_model.image_size // 4  # SAM 2 low-res logits: a quarter of the input side
    assert r.masks.shape[1:] == image.shape and r.logits.shape[1:] == (low, low)
    assert len(r.scores) == len(r.masks) == 3  # one point: SAM's three ambiguity candidates


def test_float_binary_mask_the_size_of_the_logits_grid_is_a_mask():
    from napari_sam_stack.prompts import make_prompt

    m = np.zeros((256, 256), np.float32)
    m[100:120, 80:90] = 1.0
    p = make_prompt((256, 256), mask=m)
    assert not p.mask_is_logits and p.mask.dtype == bool and p.mask.sum() == 200
    logits = np.where(m > 0, 3.5, -7.25).astype(np.float32)
    assert make_prompt((256, 256), mask=logits).mask_is_logits


def test_points_in_stack_coordinates(sam2_model):
    from napari_sam_stack.errors import PromptError

    rng = np.random.default_rng(0)
    s = Session(rng.integers(0, 255, (4, 30, 41), dtype=np.uint8), sam2_model, axis=0, in_memory=True)
    a = s.predict(2, points=[[2, 10, 12], [2, 20, 30]], point_labels=[1, 0])
    b = s.predict(2, points=[[10, 12], [20, 30]], point_labels=[1, 0])
    np.testing.assert_array_equal(a.logits, b.logits)
    with pytest.raises(PromptError, match="not on slice 2"):
        s.predict(2, points=[[3, 10, 12]])
    s.add_prompt(1, 1, points=[[1, 5, 6]])
    assert s.prompts[1][1].points.tolist() == [[6.0, 5.0]]  # stored as SAM's (x, y)
