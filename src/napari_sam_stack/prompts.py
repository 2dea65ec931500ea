"""Prompt validation and conversion, shared by 2D predict and propagation.

Users speak napari: points are (row, col) in the slice, boxes are
(row_min, col_min, row_max, col_max). SAM speaks (x, y). The swap happens here,
once; everything downstream of :class:`Prompt` is in SAM's (x, y) pixel units of
the original slice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import PromptError

LOW_RES = 256  # side of SAM's low-resolution mask logits


@dataclass(frozen=True)
class Prompt:
    """A validated prompt on one slice, in SAM's convention.

    ``points``: (K, 2) float32 (x, y) or None; ``labels``: (K,) int32 (1 = object,
    0 = background) or None; ``box``: (4,) float32 (x0, y0, x1, y1) or None;
    ``mask``: (Y, X) bool mask of the slice, or (256, 256) float32 low-res logits
    (``mask_is_logits``), or None.
    """

    points: np.ndarray | None = None
    labels: np.ndarray | None = None
    box: np.ndarray | None = None
    mask: np.ndarray | None = None
    mask_is_logits: bool = False

    @property
    def n_points(self) -> int:
        return 0 if self.points is None else len(self.points)

    def is_empty(self) -> bool:
        return self.points is None and self.box is None and self.mask is None


def make_prompt(shape, points=None, point_labels=None, box=None, mask=None, *, allow_empty: bool = False) -> Prompt:
    """Check a napari-convention prompt against a slice of ``shape`` (rows, cols) and convert it."""
    rows, cols = int(shape[0]), int(shape[1])
    pts = lab = bx = None
    if points is not None:
        p = float_array(points, "points")
        if p.size == 0:
            p = p.reshape(0, 2)
        if p.ndim == 1 and p.shape[0] == 2:
            p = p[None]
        if p.ndim != 2 or p.shape[1] != 2:
            raise PromptError(f"points must be (K, 2) as (row, col), got shape {p.shape}")
        if not np.isfinite(p).all():
            raise PromptError("points contain NaN or infinite coordinates")
        _check_inside(p, rows, cols, "point")
        if point_labels is None:
            lab = np.ones(len(p), np.int32)
        else:
            lab = np.asarray(point_labels).reshape(-1)
            if len(lab) != len(p):
                raise PromptError(f"{len(p)} points but {len(lab)} point_labels")
            if lab.dtype == bool:
                lab = lab.astype(np.int32)
            if not np.isin(lab, (0, 1)).all():
                raise PromptError(f"point_labels must be 1 (object) or 0 (background), got {sorted(set(lab.tolist()))}")
            lab = lab.astype(np.int32)
        if len(p):
            pts = np.ascontiguousarray(p[:, ::-1], dtype=np.float32)
        else:
            lab = None
    elif point_labels is not None and len(np.atleast_1d(point_labels)):
        raise PromptError("point_labels given without points")
    if box is not None:
        b = float_array(box, "box").reshape(-1)
        if b.shape != (4,):
            raise PromptError(f"box must be (row_min, col_min, row_max, col_max), got {b.size} numbers")
        if not np.isfinite(b).all():
            raise PromptError("box contains NaN or infinite coordinates")
        r0, c0, r1, c1 = b
        if r1 <= r0 or c1 <= c0:
            raise PromptError(f"box has zero or negative extent: rows {r0}..{r1}, cols {c0}..{c1}")
        # Half-open pixel bounds (numpy slices, regionprops' bbox, automatic records) reach
        # half a pixel past the slice's outer edge: they are accepted as they are.
        _check_inside(np.array([[r0, c0], [r1, c1]]), rows, cols, "box corner", margin=1.0)
        bx = np.array([c0, r0, c1, r1], np.float32)
    m, is_logits = _mask(mask, rows, cols)
    prompt = Prompt(pts, lab, bx, m, is_logits)
    if prompt.is_empty() and not allow_empty:
        raise PromptError("empty prompt: give points, a box or a mask")
    return prompt


def float_array(x, what) -> np.ndarray:
    """``x`` as float64 numbers; PromptError for strings, bools, ragged lists, None inside."""
    if isinstance(x, (str, bytes)) or (isinstance(x, np.ndarray) and x.dtype.kind not in "iuf"):
        raise PromptError(f"{what} must be numbers, got {x!r}")
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError, OverflowError) as e:
        raise PromptError(f"{what} must be numbers ({e}), got {x!r}") from None
    if np.asarray(x).dtype.kind not in "iuf":  # strings, bools, objects that numpy happened to convert
        raise PromptError(f"{what} must be numbers, got {x!r}")
    return a


def _check_inside(p: np.ndarray, rows: int, cols: int, what: str, margin: float = 0.5) -> None:
    # napari puts pixel centres on integers: pixel 0 spans -0.5..0.5 (margin 0.5 = the outer edge).
    bad = (p[:, 0] < -margin) | (p[:, 0] > rows - 1 + margin) | (p[:, 1] < -margin) | (p[:, 1] > cols - 1 + margin)
    if bad.any():
        r, c = p[np.argmax(bad)]
        raise PromptError(f"{what} (row {r:g}, col {c:g}) lies outside the slice of {rows} x {cols} pixels")


def _mask(mask, rows, cols):
    if mask is None:
        return None, False
    m = np.asarray(mask)
    # A float array of the slice's shape holding only 0 and 1 is a binary mask too (logits
    # are never exactly 0/1 everywhere); that settles slices as large as the logits grid.
    binary_float = np.issubdtype(m.dtype, np.floating) and m.shape == (rows, cols) and np.isin(m, (0.0, 1.0)).all()
    if m.shape == (rows, cols) and (m.dtype == bool or np.issubdtype(m.dtype, np.integer) or binary_float):
        if not np.isin(m, (0, 1)).all() and m.dtype != bool:
            m = m != 0
        m = m.astype(bool)
        if not m.any():
            raise PromptError("mask prompt is empty (no pixel set)")
        return m, False
    if m.ndim == 3 and m.shape[0] == 1:
        m = m[0]
    # Low-res logits are square: 256x256 for the official models (image_size / 4 in general;
    # predict checks the side against the model).
    if m.ndim == 2 and m.shape[0] == m.shape[1] and np.issubdtype(m.dtype, np.floating):
        m = m.astype(np.float32)
        if not np.isfinite(m).all():
            raise PromptError("mask logits contain NaN or infinite values")
        return m, True
    raise PromptError(
        f"mask must be a binary mask of the slice ({rows} x {cols}) or {LOW_RES}x{LOW_RES} float logits "
        f"(Prediction.logits[i]), got {m.shape} {m.dtype}"
    )
