"""Any microscopy array -> uint8 RGB frames, one per slice, with ONE volume-wide contrast.

uint8 data passes through unchanged, so results equal the official predictors'.
Everything else is mapped with the same (low, high) limits on every slice, taken
from the caller (e.g. napari's ``contrast_limits``) or from percentiles of a sample
of slices: a dask or zarr volume is never read whole to find them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from ._validate import finite_number, integer, is_bool
from .errors import ImageError

DEFAULT_PERCENTILES = (0.5, 99.5)
_SAMPLE_SLICES = 16
_SAMPLE_PIXELS = 1 << 18  # per sampled slice


def slice_index(index, n: int) -> int:
    """``index`` as a slice number in ``0..n-1`` (negative counts from the end); ImageError otherwise."""
    i = integer(index, "slice index", ImageError)
    if not -n <= i < n:
        raise ImageError(f"slice {index} is out of range for {n} slices")
    return i % n


def _axis(axis, ndim: int, what: str) -> int:
    """An axis number in -ndim..ndim-1, normalised; anything else is an ImageError (never wrapped)."""
    a = integer(axis, f"{what} (an axis number)", ImageError)
    if not -ndim <= a < ndim:
        raise ImageError(f"{what}={axis!r} does not exist: the image has {ndim} dimensions (0..{ndim - 1})")
    return a % ndim


def _as_array(image):
    """An array-like (numpy, dask, zarr, h5py) as it is, anything else through numpy; ImageError if neither."""
    if type(image).__module__.split(".")[0] == "torch":
        raise ImageError("a torch tensor is not read as an image: pass image.detach().cpu().numpy()")
    if not hasattr(image, "shape") or not hasattr(image, "dtype") or not hasattr(image, "__getitem__"):
        if image is None or isinstance(image, (str, bytes, dict)):
            raise ImageError(f"image must be an array (numpy, dask, zarr), got {type(image).__name__}")
        try:
            image = np.asarray(image)
        except (TypeError, ValueError) as e:
            raise ImageError(f"image cannot be read as an array ({e}): pass a numpy, dask or zarr array") from None
    try:
        np.dtype(image.dtype)
        tuple(int(s) for s in image.shape)
    except (TypeError, ValueError):
        raise ImageError(f"image has no numpy dtype/shape ({type(image).__name__}): pass a numpy, dask or zarr array") from None
    return image


class Frames:
    """A read-only view of an image as a sequence of uint8 ``(Y, X, 3)`` frames.

    Parameters
    ----------
    image : array-like (numpy, dask, zarr; anything with shape, dtype and slicing)
    axis : the slice axis (z or t), or ``None`` for a single 2D (or RGB) image.
    fixed : ``{axis: index}`` for further non-spatial axes, e.g. ``{1: 5}`` to walk
        t at z=5 in a (T, Z, Y, X) array.
    channel_axis : axis of channels, or ``None`` for grey. Default: the last axis
        when the array has one more dimension than (slices, Y, X) needs.
    channel : channel index, or up to three indices mapped to R, G, B (default: grey
        replicated; 3 channels as RGB; a 4th channel of uint8 data, alpha, dropped; other 4-channel data needs ``channel``).
    contrast_limits : ``(low, high)`` for non-uint8 data, one pair or one per channel
        (ignored for uint8, which always passes through unchanged).
    percentiles : used when ``contrast_limits`` is not given: the limits are these
        percentiles of a sample of up to 16 evenly spaced slices (per channel, finite
        values only; the sample's min/max when they coincide, e.g. for sparse data).

    Values map linearly from ``low..high`` to 0..255 and are clipped; NaN becomes 0,
    +inf 255, -inf 0; constant data becomes 0; bool maps False/True to 0/255.
    """

    def __init__(
        self,
        image: Any,
        axis: int | None = 0,
        *,
        fixed: dict[int, int] | None = None,
        channel_axis: int | None | str = "auto",
        channel: int | Sequence[int] | None = None,
        contrast_limits: Sequence[float] | Sequence[Sequence[float]] | None = None,
        percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    ):
        image = _as_array(image)
        self.image = image
        ndim = len(image.shape)
        if fixed is not None and not isinstance(fixed, dict):
            raise ImageError(f"fixed must be a dict {{axis: index}}, e.g. {{1: 5}}, got {fixed!r}")
        self.fixed = {_axis(k, ndim, "fixed axis"): integer(v, f"fixed index of axis {k}", ImageError)
                      for k, v in (fixed or {}).items()}
        spatial_needed = 2 + (axis is not None) + len(self.fixed)
        if isinstance(channel_axis, str) and channel_axis != "auto":
            raise ImageError(f"channel_axis must be an axis number, None or 'auto', got {channel_axis!r}")
        auto = channel_axis == "auto"
        if auto:
            channel_axis = ndim - 1 if ndim == spatial_needed + 1 else None
        if (auto and channel_axis is None and axis is not None and not self.fixed and ndim == 3
                and image.shape[-1] in (3, 4) and min(image.shape[:2]) > 4 * image.shape[-1]):
            raise ImageError(
                f"an image of shape {tuple(image.shape)} looks like ONE RGB{'A' if image.shape[-1] == 4 else ''} "
                f"picture, which axis={axis} would cut into {image.shape[axis]} slices: pass axis=None for one "
                "colour image, or channel_axis=None if it really is a stack of slices"
            )
        self.channel_axis = None if channel_axis is None else _axis(channel_axis, ndim, "channel_axis")
        if ndim != spatial_needed + (self.channel_axis is not None):
            hint = " For a single 2D image pass axis=None." if ndim in (2, 3) and axis is not None else ""
            raise ImageError(
                f"image of shape {tuple(image.shape)} does not fit axis={axis}, fixed={fixed}, "
                f"channel_axis={channel_axis}: expected {spatial_needed + (self.channel_axis is not None)} dimensions."
                + hint
            )
        self.axis = None if axis is None else _axis(axis, ndim, "axis")
        taken = {self.axis, self.channel_axis, *self.fixed} - {None}
        if len(taken) != (self.axis is not None) + (self.channel_axis is not None) + len(self.fixed):
            raise ImageError("axis, channel_axis and fixed axes must all differ")
        for ax, i in self.fixed.items():
            if not 0 <= i < image.shape[ax]:
                raise ImageError(f"fixed index {i} is out of range for axis {ax} of size {image.shape[ax]}")
        self.spatial_axes = [a for a in range(ndim) if a not in taken]
        if 0 in image.shape:
            raise ImageError(f"the image of shape {tuple(image.shape)} is empty (an axis of size 0): "
                             "give at least one slice of at least 1 x 1 pixels")
        self.channels = self._choose_channels(channel)
        self.dtype = np.dtype(image.dtype)
        if self.dtype.kind not in "biuf":
            raise ImageError(f"cannot make frames from {self.dtype} data: give bool, integer or float pixels")
        self.passthrough = self.dtype == np.uint8
        self.contrast_limits = None if self.passthrough else self._limits(contrast_limits, percentiles)

    # ------------------------------------------------------------------ shape
    def __len__(self) -> int:
        return 1 if self.axis is None else int(self.image.shape[self.axis])

    @property
    def frame_shape(self) -> tuple[int, int]:
        return tuple(int(self.image.shape[a]) for a in self.spatial_axes)

    def _choose_channels(self, channel) -> list[int] | None:
        if self.channel_axis is None:
            if channel is not None:
                raise ImageError("channel given but the image has no channel axis")
            return None
        n = int(self.image.shape[self.channel_axis])
        if channel is None:
            if n == 1:
                return [0]
            if n == 3 or (n == 4 and self.image.dtype == np.uint8):  # RGB, or RGBA with alpha dropped
                return [0, 1, 2]
            hint = ""
            if self.axis is None and n > 4:
                hint = " (or is it a stack of slices? then pass its slice axis, e.g. axis=0)"
            raise ImageError(
                f"the image has {n} channels: choose one with channel=i, or up to three as channel=[r, g, b]{hint}"
            )
        try:
            many = not np.isscalar(channel) and not isinstance(channel, str)
            chans = [integer(c, "channel", ImageError) for c in channel] if many else [integer(channel, "channel", ImageError)]
        except (TypeError, ImageError):
            chans = []
        if not 1 <= len(chans) <= 3 or any(not 0 <= c < n for c in chans):
            raise ImageError(f"channel={channel!r}: give 1 to 3 indices in 0..{n - 1}")
        return chans

    # ------------------------------------------------------------------ reading
    def raw(self, index: int) -> np.ndarray:
        """Slice ``index`` as stored: (Y, X) or (Y, X, k) for the chosen channels."""
        i = slice_index(index, len(self))
        key: list[Any] = [slice(None)] * len(self.image.shape)
        if self.axis is not None:
            key[self.axis] = i
        for ax, i in self.fixed.items():
            key[ax] = i
        if self.channels is not None:  # a plain slice works for every array type (zarr, h5py, dask)
            key[self.channel_axis] = slice(min(self.channels), max(self.channels) + 1)
        arr = np.asarray(self.image[tuple(key)])
        kept = [a for a in range(len(self.image.shape)) if not isinstance(key[a], int)]
        order = [kept.index(a) for a in self.spatial_axes]
        if self.channels is None:
            return np.transpose(arr, order)
        arr = np.transpose(arr, order + [kept.index(self.channel_axis)])
        first = min(self.channels)
        return arr[..., [c - first for c in self.channels]]

    def __getitem__(self, index: int) -> np.ndarray:
        """Frame ``index`` as uint8 (Y, X, 3)."""
        return self.to_rgb8(self.raw(index))

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def to_rgb8(self, raw: np.ndarray) -> np.ndarray:
        if not self.passthrough:
            raw = self._scale(raw)
        if raw.ndim == 2:
            raw = raw[..., None]
        if raw.shape[-1] == 1:
            return np.ascontiguousarray(np.repeat(raw, 3, axis=-1))
        if raw.shape[-1] == 3:
            return np.ascontiguousarray(raw)
        out = np.zeros(raw.shape[:2] + (3,), np.uint8)
        out[..., : raw.shape[-1]] = raw
        return out

    def _scale(self, raw: np.ndarray) -> np.ndarray:
        """(x - low) / (high - low) -> 0..255 with the volume-wide limits; NaN -> 0, +inf -> 255."""
        lo, hi = self.contrast_limits
        x = raw.astype(np.float64)  # always a copy: operated on in place below
        span = np.where(hi > lo, hi - lo, 1.0)  # constant data: no division by zero
        x -= lo
        x /= span
        np.nan_to_num(x, copy=False, nan=0.0, posinf=1.0, neginf=0.0)
        np.clip(x, 0.0, 1.0, out=x)
        x *= 255.0
        return np.rint(x, out=x).astype(np.uint8)

    def _limits(self, given, percentiles) -> tuple[np.ndarray, np.ndarray]:
        k = 1 if self.channels is None else len(self.channels)
        if self.dtype == np.bool_:
            return np.zeros(k), np.ones(k)
        if given is not None:
            try:
                if isinstance(given, (str, bytes)) or is_bool(np.asarray(given)):
                    raise TypeError
                arr = np.asarray(given, dtype=np.float64).reshape(-1, 2)
            except (TypeError, ValueError):
                raise ImageError(f"contrast_limits must be numbers as (low, high), or one pair per channel, "
                                 f"e.g. (100, 4000), got {given!r}") from None
            if arr.shape[0] not in (1, k):
                raise ImageError(f"contrast_limits: give one (low, high) pair or {k}")
            if not np.isfinite(arr).all() or (arr[:, 1] < arr[:, 0]).any():
                raise ImageError(f"contrast_limits must be finite (low, high) pairs with low <= high, got {given!r}")
            arr = np.broadcast_to(arr, (k, 2))
            return arr[:, 0].copy(), arr[:, 1].copy()
        if not isinstance(percentiles, (tuple, list)) or len(percentiles) != 2:
            raise ImageError(f"percentiles must be (low, high) in 0..100, e.g. (0.5, 99.5), got {percentiles!r}")
        p_lo, p_hi = (finite_number(p, "percentiles", ImageError, minimum=0) for p in percentiles)
        if not p_lo <= p_hi <= 100:
            raise ImageError(f"percentiles must be (low, high) with 0 <= low <= high <= 100, got {percentiles!r}")
        percentiles = (p_lo, p_hi)
        sample = self._sample()
        lo, hi = np.empty(k), np.empty(k)
        for c in range(k):
            v = sample[..., c].ravel()
            v = v[np.isfinite(v)]
            if v.size == 0:
                lo[c], hi[c] = 0.0, 1.0
                continue
            lo[c], hi[c] = np.percentile(v, percentiles)
            if hi[c] <= lo[c]:  # e.g. sparse data, 99.5 % background: fall back to the full range
                lo[c], hi[c] = v.min(), v.max()
        return lo, hi

    def _sample(self) -> np.ndarray:
        """Pixels of up to 16 evenly spaced slices (read one at a time), strided to about 260 k pixels each."""
        n = len(self)
        idx = np.unique(np.linspace(0, n - 1, min(n, _SAMPLE_SLICES)).round().astype(int))
        h, w = self.frame_shape
        step = max(1, int(np.ceil(np.sqrt(h * w / _SAMPLE_PIXELS))))
        parts = []
        for i in idx:
            r = self.raw(int(i))[::step, ::step]
            parts.append(r.reshape(-1, 1 if r.ndim == 2 else r.shape[-1]).astype(np.float64))
        return np.concatenate(parts)

    # ------------------------------------------------------------------ identity
    def signature(self) -> dict[str, Any]:
        """What determines the frames: shape, dtype, view parameters, a content hash of a sample."""
        h = hashlib.sha256()
        n = len(self)
        for i in sorted({0, n // 2, n - 1} | set(np.linspace(0, n - 1, min(n, 8)).round().astype(int).tolist())):
            r = np.ascontiguousarray(self.raw(int(i)))
            h.update(r[:: max(1, r.shape[0] // 64), :: max(1, r.shape[1] // 64)].tobytes())
            h.update(r[r.shape[0] // 2].tobytes())
        return {
            "shape": [int(s) for s in self.image.shape],
            "dtype": str(self.dtype),
            "axis": self.axis,
            "fixed": {str(k): v for k, v in sorted(self.fixed.items())},
            "channel_axis": self.channel_axis,
            "channels": self.channels,
            "contrast_limits": None if self.contrast_limits is None else np.asarray(self.contrast_limits).tolist(),
            "content": h.hexdigest(),
        }
