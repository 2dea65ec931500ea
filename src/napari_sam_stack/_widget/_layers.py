"""The layers the widget makes and reads: prompt points/boxes, the preview, the target labels.

Everything is in layer data coordinates, with the image layer's scale and translate,
so anisotropic or shifted stacks line up with the clicks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._report import UserError
from ._view import SliceView

POINTS_NAME = "SAM points"
BOXES_NAME = "SAM boxes"
PREVIEW_NAME = "SAM preview"
TARGET_NAME = "SAM labels"

POSITIVE, NEGATIVE = "positive", "negative"
POINT_COLORS = {POSITIVE: "lime", NEGATIVE: "magenta"}
PREVIEW_COLOR = "cyan"
TAG = "napari_sam_stack"  # layer.metadata key naming the widget's own layers (napari may hand us proxies of them)


def role(layer) -> str | None:
    """'points', 'boxes' or 'preview' for a layer this widget made, else ``None``."""
    return getattr(layer, "metadata", {}).get(TAG)


def _geometry(view: SliceView) -> dict:
    layer = view.layer
    ndim = view.ndim
    return {"scale": tuple(layer.scale)[-ndim:], "translate": tuple(layer.translate)[-ndim:]}


def make_points_layer(viewer, view: SliceView):
    """Points for clicks; the ``label`` feature (positive/negative) sets the face colour."""
    import pandas as pd

    cats = pd.CategoricalDtype([POSITIVE, NEGATIVE])
    layer = viewer.add_points(
        np.empty((0, view.ndim)),
        name=POINTS_NAME,
        ndim=view.ndim,
        features=pd.DataFrame({"label": pd.Series([], dtype=cats)}),
        feature_defaults={"label": POSITIVE},
        face_color="label",
        face_color_cycle=POINT_COLORS,
        border_color="white",
        size=max(3.0, min(view.label_shape[-2:]) / 40),
        metadata={TAG: "points"},
        **_geometry(view),
    )
    layer.mode = "add"
    return layer


def make_boxes_layer(viewer, view: SliceView):
    return viewer.add_shapes(
        None, ndim=view.ndim, name=BOXES_NAME, shape_type="rectangle", edge_color="yellow",
        face_color="transparent", edge_width=max(1.0, min(view.label_shape[-2:]) / 200), metadata={TAG: "boxes"},
        **_geometry(view),
    )


def make_labels_layer(viewer, view: SliceView, name: str, dtype=np.uint32, **kw):
    return viewer.add_labels(np.zeros(view.label_shape, dtype), name=name, **_geometry(view), **kw)


def make_preview_layer(viewer, view: SliceView):
    """The current object's mask, one colour, see-through; not part of any undo history."""
    from napari.utils.colormaps import DirectLabelColormap

    cmap = DirectLabelColormap(color_dict={None: "transparent", 0: "transparent", 1: PREVIEW_COLOR})
    return make_labels_layer(viewer, view, PREVIEW_NAME, np.uint8, opacity=0.5, colormap=cmap, metadata={TAG: "preview"})


def fits(layer, view: SliceView, geometry: bool = False, grid: bool = True) -> bool:
    """Whether a layer matches the view: same dimensions, the labels shape (``grid``, for
    labels layers; not for points and shapes) and, with ``geometry``, the same scale and translate."""
    if layer is None or layer.ndim != view.ndim:
        return False
    if grid and tuple(layer.data.shape) != view.label_shape:
        return False
    if geometry:
        geo = _geometry(view)
        return np.allclose(layer.scale, geo["scale"]) and np.allclose(layer.translate, geo["translate"])
    return True


# ---------------------------------------------------------------------- prompts


@dataclass(frozen=True)
class SlicePrompt:
    """The user's prompt on one slice, in napari (row, col) pixel coordinates."""

    points: np.ndarray | None  # (K, 2)
    labels: np.ndarray | None  # (K,) 1 / 0
    box: np.ndarray | None  # (4,) row0, col0, row1, col1

    def signature(self) -> tuple:
        return tuple(None if a is None else a.round(3).tobytes() for a in (self.points, self.labels, self.box))


def read_prompts(view: SliceView, points_layer, boxes_layer) -> dict[int, SlicePrompt]:
    """Prompts per session slice: points (with labels) and the last rectangle drawn on each slice."""
    rows, cols = view.label_shape[-2:]
    pts: dict[int, tuple] = {}
    if points_layer is not None and len(points_layer.data):
        data = np.asarray(points_layer.data, float)
        lab = (np.asarray(points_layer.features["label"].astype(str)) == POSITIVE).astype(np.int32)
        inside = (data[:, -2] >= -0.5) & (data[:, -2] <= rows - 0.5) & (data[:, -1] >= -0.5) & (data[:, -1] <= cols - 0.5)
        keep = view.on_view(data) & inside
        idx = view.slice_of(data)
        keep &= (idx >= 0) & (idx < len(view))
        for i in np.unique(idx[keep]):
            sel = keep & (idx == i)
            pts[int(i)] = (data[sel, -2:], lab[sel])
    boxes: dict[int, np.ndarray] = {}
    if boxes_layer is not None:
        for verts, kind in zip(boxes_layer.data, boxes_layer.shape_type):
            v = np.asarray(verts, float)
            if kind != "rectangle" or not view.on_view(v[:1])[0]:
                continue
            i = int(view.slice_of(v[:1])[0])
            if not 0 <= i < len(view):
                continue
            lo = np.clip(v[:, -2:].min(0), -0.5, [rows - 0.5, cols - 0.5])
            hi = np.clip(v[:, -2:].max(0), -0.5, [rows - 0.5, cols - 0.5])
            if (hi > lo).all():
                boxes[i] = np.array([lo[0], lo[1], hi[0], hi[1]])
    out = {}
    for i in sorted(set(pts) | set(boxes)):
        p, lab = pts.get(i, (None, None))
        out[i] = SlicePrompt(p, lab, boxes.get(i))
    return out


def set_point_labels(points_layer, label: str, indices=None) -> None:
    """New points get ``label``; the points at ``indices`` (e.g. the selection) switch to it."""
    points_layer.feature_defaults = {"label": label}
    if indices:
        feats = points_layer.features.copy()
        feats.loc[sorted(indices), "label"] = label
        points_layer.features = feats
        points_layer.refresh_colors()


# ---------------------------------------------------------------------- labels


def write_preview(preview, view: SliceView, index: int, mask: np.ndarray | None, value: int = 1) -> None:
    """Show ``mask`` (Y, X bool, or None to clear) as the preview of slice ``index``."""
    sl = preview.data[view.slice_key(index)]
    sl[...] = 0 if mask is None else np.where(mask, value, 0).astype(sl.dtype)
    preview.refresh()


def commit_object(target, view: SliceView, obj: np.ndarray, obj_id: int, overwrite: bool = False) -> int:
    """Write one object into ``target`` as ONE undoable step; returns the number of pixels changed.

    ``obj``: bool array of the view's region ((N, Y, X) or (Y, X)). Pixels of ``obj_id``
    outside ``obj`` (in the region) are cleared, so refining an object replaces it.
    Other objects are kept unless ``overwrite``.
    """
    info = np.iinfo(target.data.dtype)
    if obj_id > info.max:
        raise UserError(
            f"label id {obj_id} does not fit the {target.data.dtype} labels layer {target.name!r} (max {info.max}); "
            "choose a smaller id or a wider labels layer"
        )
    region = np.asarray(target.data[view.region_key()])
    write = obj & (region != obj_id)  # a new array: ``obj`` itself is never modified
    if not overwrite:
        write &= region == 0
    clear = (region == obj_id) & ~obj
    n = int(write.sum() + clear.sum())
    if n == 0:
        return 0
    with target.block_history():
        if write.any():
            target.data_setitem(view.region_to_full(np.nonzero(write)), obj_id, refresh=False)
        if clear.any():
            target.data_setitem(view.region_to_full(np.nonzero(clear)), 0, refresh=False)
    target.refresh()
    return n


def next_free_id(target) -> int:
    return 1 if target is None else int(np.max(target.data)) + 1
