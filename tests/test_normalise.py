"""Frames: every dtype and layout -> uint8 RGB with one volume-wide contrast."""

from __future__ import annotations

import warnings

import dask.array as da
import numpy as np
import pytest
import zarr

from napari_sam_stack.errors import ImageError
from napari_sam_stack.normalise import Frames


def _expected(x, lo, hi):
    """The documented mapping, written independently: linear low..high -> 0..255, clipped."""
    x = np.asarray(x, np.float64)
    span = hi - lo if hi > lo else 1.0
    y = np.clip((x - lo) / span, 0, 1)
    y = np.where(np.isnan(y), 0, y)
    return np.rint(y * 255).astype(np.uint8)


class Recorder:
    """An array-like that records every read, to prove volumes are read slice by slice."""

    def __init__(self, arr, axis=0):
        self.arr, self.axis, self.reads = arr, axis, []
        self.shape, self.dtype, self.ndim = arr.shape, arr.dtype, arr.ndim

    def __getitem__(self, key):
        self.reads.append(key)
        return self.arr[key]


# ---------------------------------------------------------------- uint8 passes through


def test_uint8_stack_passes_through(stack_u8):
    f = Frames(stack_u8, 0)
    assert len(f) == 6 and f.frame_shape == (45, 71) and f.contrast_limits is None
    for i in range(6):
        fr = f[i]
        assert fr.dtype == np.uint8 and fr.shape == (45, 71, 3) and fr.flags.c_contiguous
        for c in range(3):
            np.testing.assert_array_equal(fr[..., c], stack_u8[i])


def test_uint8_ignores_contrast_limits(stack_u8):
    f = Frames(stack_u8, 0, contrast_limits=(50, 60))
    np.testing.assert_array_equal(f[2][..., 0], stack_u8[2])


def test_rgb_2d_and_rgba():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (33, 20, 3), dtype=np.uint8)
    f = Frames(rgb, None)
    assert len(f) == 1 and f.frame_shape == (33, 20)
    np.testing.assert_array_equal(f[0], rgb)
    rgba = rng.integers(0, 256, (33, 20, 4), dtype=np.uint8)
    np.testing.assert_array_equal(Frames(rgba, None)[0], rgba[..., :3])


def test_2d_grey_image():
    img = np.arange(30 * 17, dtype=np.uint16).reshape(30, 17)
    f = Frames(img, None)
    assert len(f) == 1 and f.frame_shape == (30, 17)
    lo, hi = np.percentile(img, (0.5, 99.5))
    np.testing.assert_array_equal(f[0][..., 1], _expected(img, lo, hi))
    for bad in (1, -2, 0.5, "0"):
        with pytest.raises(ImageError, match="slice"):
            f[bad]
    with pytest.raises(ImageError, match="axis=None"):
        Frames(img, 0)


# ---------------------------------------------------------------- one volume-wide contrast


def test_uint16_volume_wide_percentiles():
    rng = np.random.default_rng(0)
    vol = rng.integers(100, 4000, (5, 24, 31)).astype(np.uint16)
    vol[3] += 20000  # one bright slice: per-slice contrast would hide it
    f = Frames(vol, 0)
    lo, hi = np.percentile(vol.astype(np.float64), (0.5, 99.5))  # the sample is the whole (small) volume
    np.testing.assert_allclose([f.contrast_limits[0][0], f.contrast_limits[1][0]], [lo, hi])
    for i in range(5):
        fr = f[i]
        np.testing.assert_array_equal(fr[..., 0], _expected(vol[i], lo, hi))
        np.testing.assert_array_equal(fr[..., 0], fr[..., 2])
    # consistency: one raw value gives one uint8 value on every slice
    vol2 = np.zeros((4, 8, 8), np.uint16)
    vol2[:, 0, 0] = 1000
    vol2[:, 1:, :] = np.arange(4)[:, None, None] * 300
    f2 = Frames(vol2, 0, contrast_limits=(0, 2000))
    assert len({int(f2[i][0, 0, 0]) for i in range(4)}) == 1


def test_percentiles_option():
    vol = np.arange(2 * 10 * 10, dtype=np.int32).reshape(2, 10, 10)
    f = Frames(vol, 0, percentiles=(10, 90))
    lo, hi = np.percentile(vol, (10, 90))
    np.testing.assert_array_equal(f[1][..., 0], _expected(vol[1], lo, hi))


@pytest.mark.parametrize("dtype", [np.uint16, np.int8, np.int16, np.int32, np.int64, np.uint32, np.float16, np.float32, np.float64])
def test_every_numeric_dtype(dtype):
    rng = np.random.default_rng(3)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    low = max(info.min, -100) if info else -3.5
    vol = rng.uniform(low, 120, (3, 12, 9)).astype(dtype)
    f = Frames(vol, 0)
    lo, hi = np.percentile(vol.astype(np.float64), (0.5, 99.5))
    np.testing.assert_allclose([f.contrast_limits[0][0], f.contrast_limits[1][0]], [lo, hi], rtol=1e-12)
    for i in range(3):
        assert f[i].dtype == np.uint8
        np.testing.assert_array_equal(f[i][..., 0], _expected(vol[i], lo, hi))


def test_float_nan_and_inf():
    vol = np.linspace(0, 1, 3 * 6 * 7, dtype=np.float32).reshape(3, 6, 7)
    vol[0, 0, 0] = np.nan
    vol[1, 0, 0] = np.inf
    vol[2, 0, 0] = -np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        f = Frames(vol, 0)
        frames = [f[i] for i in range(3)]
    finite = vol[np.isfinite(vol)].astype(np.float64)
    lo, hi = np.percentile(finite, (0.5, 99.5))
    assert np.isfinite(f.contrast_limits).all()
    assert frames[0][0, 0, 0] == 0 and frames[1][0, 0, 0] == 255 and frames[2][0, 0, 0] == 0
    rest = np.isfinite(vol[1])
    np.testing.assert_array_equal(frames[1][..., 0][rest], _expected(vol[1], lo, hi)[rest])


def test_all_nan_image():
    vol = np.full((2, 5, 5), np.nan, np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        f = Frames(vol, 0)
        assert (f[1] == 0).all()


@pytest.mark.parametrize("dtype", [np.uint16, np.float32, np.int16])
def test_constant_image_no_division_by_zero(dtype):
    vol = np.full((3, 7, 5), 42, dtype)
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        f = Frames(vol, 0)
        out = [f[i] for i in range(3)]
    assert all((o == 0).all() for o in out)
    # explicit equal limits too
    with np.errstate(all="raise"):
        assert (Frames(vol, 0, contrast_limits=(42, 42))[0] == 0).all()


def test_sparse_image_falls_back_to_full_range():
    vol = np.zeros((2, 100, 100), np.uint16)
    vol[0, :3, :3] = 500  # 9 bright pixels of 20000: both percentiles are 0
    f = Frames(vol, 0)
    assert f[0][0, 0, 0] == 255 and f[0][50, 50, 0] == 0


def test_bool():
    vol = np.zeros((2, 6, 8), bool)
    vol[1, 2:4, 3:5] = True
    f = Frames(vol, 0)
    np.testing.assert_array_equal(f[1][..., 0], vol[1].astype(np.uint8) * 255)
    assert (f[0] == 0).all()


def test_explicit_contrast_limits_and_validation():
    vol = np.arange(2 * 10 * 10, dtype=np.uint16).reshape(2, 10, 10) * 10
    f = Frames(vol, 0, contrast_limits=(100, 1500))
    np.testing.assert_array_equal(f[1][..., 0], _expected(vol[1], 100, 1500))
    for bad in [(10, 5), (0, np.inf), (np.nan, 3), (1, 2, 3, 4, 5, 6)]:
        with pytest.raises(ImageError):
            Frames(vol, 0, contrast_limits=bad)


def test_unsupported_dtype():
    with pytest.raises(ImageError, match="complex"):
        Frames(np.zeros((2, 4, 4), np.complex64), 0)


# ---------------------------------------------------------------- channels and axes


def test_multichannel_channel_selection():
    rng = np.random.default_rng(5)
    vol = rng.integers(0, 3000, (4, 10, 12, 5)).astype(np.uint16)
    with pytest.raises(ImageError, match="5 channels"):
        Frames(vol, 0)
    one = Frames(vol, 0, channel=3)
    lo, hi = np.percentile(vol[..., 3].astype(np.float64), (0.5, 99.5))
    fr = one[2]
    for c in range(3):
        np.testing.assert_array_equal(fr[..., c], _expected(vol[2, ..., 3], lo, hi))
    two = Frames(vol, 0, channel=[4, 1], contrast_limits=[(0, 1000), (500, 2500)])
    fr = two[1]
    np.testing.assert_array_equal(fr[..., 0], _expected(vol[1, ..., 4], 0, 1000))
    np.testing.assert_array_equal(fr[..., 1], _expected(vol[1, ..., 1], 500, 2500))
    assert (fr[..., 2] == 0).all()
    three = Frames(vol, 0, channel=[0, 2, 4])
    for k, c in enumerate([0, 2, 4]):
        lo, hi = np.percentile(vol[..., c].astype(np.float64), (0.5, 99.5))
        np.testing.assert_array_equal(three[3][..., k], _expected(vol[3, ..., c], lo, hi))
    for bad in ([0, 1, 2, 3], [7], [], "red", [None]):
        with pytest.raises(ImageError):
            Frames(vol, 0, channel=bad)
    with pytest.raises(ImageError, match="no channel axis"):
        Frames(vol[..., 0], 0, channel=0)


def test_channel_axis_not_last_and_uint8_channels():
    rng = np.random.default_rng(6)
    vol = rng.integers(0, 256, (3, 2, 9, 11), dtype=np.uint8)  # (N, C, Y, X)
    f = Frames(vol, 0, channel_axis=1, channel=1)
    np.testing.assert_array_equal(f[2][..., 0], vol[2, 1])
    np.testing.assert_array_equal(f[2][..., 2], vol[2, 1])
    f = Frames(vol, 0, channel_axis=1, channel=[1, 0])
    np.testing.assert_array_equal(f[0][..., 0], vol[0, 1])
    np.testing.assert_array_equal(f[0][..., 1], vol[0, 0])


def test_slice_axis_chosen_by_caller(stack_u8):
    moved = np.moveaxis(stack_u8, 0, 2)  # (Y, X, N)
    f = Frames(moved, 2, channel_axis=None)
    assert len(f) == 6 and f.frame_shape == (45, 71)
    np.testing.assert_array_equal(f[4][..., 0], stack_u8[4])
    f = Frames(np.moveaxis(stack_u8, 0, 1), 1, channel_axis=None)  # (Y, N, X)
    np.testing.assert_array_equal(f[5][..., 0], stack_u8[5])


def test_4d_axis_and_fixed_index():
    rng = np.random.default_rng(7)
    tzyx = rng.integers(0, 1000, (4, 3, 8, 10)).astype(np.uint16)
    walk_t = Frames(tzyx, 0, fixed={1: 2})
    assert len(walk_t) == 4
    lo, hi = np.percentile(tzyx[:, 2].astype(np.float64), (0.5, 99.5))
    np.testing.assert_array_equal(walk_t[1][..., 0], _expected(tzyx[1, 2], lo, hi))
    walk_z = Frames(tzyx, 1, fixed={0: 3}, contrast_limits=(0, 999))
    assert len(walk_z) == 3
    np.testing.assert_array_equal(walk_z[2][..., 0], _expected(tzyx[3, 2], 0, 999))
    assert walk_t.signature() != Frames(tzyx, 0, fixed={1: 1}).signature()
    with pytest.raises(ImageError, match="out of range"):
        Frames(tzyx, 0, fixed={1: 3})
    with pytest.raises(ImageError):
        Frames(tzyx, 0)  # the 4th axis is neither slice, fixed nor a channel with 4 entries... ambiguous
    with pytest.raises(ImageError, match="differ"):
        Frames(tzyx[..., None], 0, fixed={0: 1})


# ---------------------------------------------------------------- lazy arrays


def _one_slice(k):
    return isinstance(k, (int, np.integer)) or (isinstance(k, slice) and k.stop - k.start == 1)


def test_dask_equals_numpy_and_reads_slice_by_slice():
    rng = np.random.default_rng(8)
    vol = rng.integers(0, 60000, (40, 16, 20)).astype(np.uint16)
    rec = Recorder(vol)
    lazy = da.from_array(rec, chunks=(1, 16, 20), asarray=True)
    rec.reads.clear()
    f = Frames(lazy, 0)
    ref = Frames(vol, 0)
    # percentiles come from a sample of at most 16 slices, each read on its own
    assert 0 < len(rec.reads) <= 16
    assert all(_one_slice(k[0]) for k in rec.reads)
    for i in (0, 17, 39):
        rec.reads.clear()
        np.testing.assert_array_equal(f[i], ref[i])
        assert len(rec.reads) == 1 and _one_slice(rec.reads[0][0])
    assert f.signature() == ref.signature()


def test_generic_array_like_never_read_whole():
    vol = np.random.default_rng(9).integers(0, 5000, (30, 12, 14)).astype(np.uint16)
    rec = Recorder(vol)
    f = Frames(rec, 0)
    f.signature()
    f[29]
    assert all(isinstance(k[0], int) for k in rec.reads)
    assert len(rec.reads) <= 16 + 11 + 1


def test_zarr_equals_numpy(tmp_path):
    rng = np.random.default_rng(10)
    vol = rng.normal(100, 30, (5, 13, 17, 2)).astype(np.float32)
    vol[2, 3, 4, 1] = np.nan
    z = zarr.create_array(tmp_path / "v.zarr", shape=vol.shape, dtype=vol.dtype, chunks=(1, 13, 17, 2))
    z[:] = vol
    for kw in ({"channel": 1}, {"channel": [1, 0]}):
        fz, fn = Frames(zarr.open_array(tmp_path / "v.zarr"), 0, **kw), Frames(vol, 0, **kw)
        np.testing.assert_allclose(fz.contrast_limits, fn.contrast_limits)
        for i in range(5):
            np.testing.assert_array_equal(fz[i], fn[i])
    zu8 = zarr.create_array(tmp_path / "u8.zarr", shape=(3, 9, 8), dtype="uint8", chunks=(1, 9, 8))
    zu8[:] = np.arange(3 * 9 * 8, dtype=np.uint8).reshape(3, 9, 8)
    np.testing.assert_array_equal(Frames(zu8, 0)[2][..., 0], zu8[2])


# ---------------------------------------------------------------- identity


def test_signature_tracks_content_and_view(stack_u8):
    base = Frames(stack_u8, 0).signature()
    assert Frames(stack_u8.copy(), 0).signature() == base
    changed = stack_u8.copy()
    changed[3, 22, :] ^= 1  # the middle row of a sampled slice
    assert Frames(changed, 0).signature()["content"] != base["content"]
    # the signature is a sample: edits it does not cover are caught per slice by the embeddings cache
    # (tests/test_embeddings.py::test_edit_the_sampled_signature_misses_recomputes_exactly_that_slice)
    u16 = stack_u8.astype(np.uint16)
    assert Frames(u16, 0).signature() != Frames(u16, 0, contrast_limits=(0, 100)).signature()
    assert Frames(stack_u8, 1).signature() != base


def test_axes_out_of_range_are_errors_not_wrapped():
    img = np.zeros((4, 10, 12), np.uint16)
    for bad in (3, -4, 5):
        with pytest.raises(ImageError, match="does not exist"):
            Frames(img, axis=bad)
    assert Frames(img, axis=-3).axis == 0
    with pytest.raises(ImageError, match="does not exist"):
        Frames(np.zeros((2, 3, 10, 12), np.uint16), axis=0, fixed={7: 0})


def test_four_channels_are_rgba_only_for_uint8():
    assert Frames(np.zeros((2, 8, 9, 4), np.uint8), axis=0).channels == [0, 1, 2]
    with pytest.raises(ImageError, match="4 channels"):
        Frames(np.zeros((2, 8, 9, 4), np.uint16), axis=0)
    assert Frames(np.zeros((2, 8, 9, 4), np.uint16), axis=0, channel=3).channels == [3]


def test_stack_passed_as_2d_gets_a_hint():
    with pytest.raises(ImageError, match="stack of slices.*axis=0"):
        Frames(np.zeros((31, 61, 57), np.uint16), axis=None)
