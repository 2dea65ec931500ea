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


def make_labels_layer(viewer, view: SliceView, name: str, dtype=np.uint32, data=None, **kw):
    """A labels layer over the view's image; ``data`` (the array itself, not a copy) or zeros."""
    data = np.zeros(view.label_shape, dtype) if data is None else data
    return viewer.add_labels(data, name=name, **_geometry(view), **kw)


def make_preview_layer(viewer, view: SliceView):
    """Objects not committed yet (and the current one), in their label colours, see-through.

    Not part of any undo history: it is a view of the annotation, repainted from it."""
    return make_labels_layer(viewer, view, PREVIEW_NAME, np.uint32, opacity=0.45, metadata={TAG: "preview"})


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


def write_preview(preview, view: SliceView, index: int, labels: np.ndarray | None, refresh: bool = True) -> None:
    """Show ``labels`` ((Y, X) ids, or bool, or None to clear) as the preview of slice ``index``."""
    sl = preview.data[view.slice_key(index)]
    sl[...] = 0 if labels is None else np.asarray(labels).astype(sl.dtype, copy=False)
    if refresh:
        preview.refresh()


def write_labels(target, view: SliceView, edit) -> None:
    """Apply an annotation's :class:`~napari_sam_stack.annotation.LabelsEdit` to ``target`` as ONE undo step."""
    if not len(edit):
        return
    info = np.iinfo(target.data.dtype)
    if int(edit.values.max()) > info.max:
        raise UserError(f"label id {int(edit.values.max())} does not fit the {target.data.dtype} labels layer "
                        f"{target.name!r} (max {info.max}); choose a smaller id or a wider labels layer")
    region = edit.indices[1:] if view.axis is None else edit.indices
    with target.block_history():
        target.data_setitem(view.region_to_full(region), np.asarray(edit.values), refresh=False)
    target.refresh()


def prompts_to_layers(view: SliceView, prompts: dict) -> tuple[np.ndarray, list[str], list[np.ndarray]]:
    """An object's prompts ({slice: Prompt}, SAM's (x, y)) as points layer data + labels and rectangles."""
    pts, labs, boxes = [], [], []

    def full(i, rc):
        out = np.zeros((len(rc), view.ndim))
        for ax, v in view.fixed.items():
            out[:, ax] = v
        if view.axis is not None:
            out[:, view.axis] = i
        out[:, -2:] = rc
        return out

    for i in sorted(prompts):
        p = prompts[i]
        if p.points is not None:
            pts.append(full(i, np.asarray(p.points, float)[:, ::-1]))
            labs += [POSITIVE if v else NEGATIVE for v in np.asarray(p.labels).tolist()]
        if p.box is not None:
            x0, y0, x1, y1 = (float(v) for v in p.box)
            boxes.append(full(i, np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]])))
    data = np.concatenate(pts) if pts else np.empty((0, view.ndim))
    return data, labs, boxes


def layer_signature(prompt) -> tuple | None:
    """:meth:`SlicePrompt.signature` of an annotation Prompt (what the layers would read back)."""
    if prompt is None or (prompt.points is None and prompt.box is None):
        return None
    pts = None if prompt.points is None else np.asarray(prompt.points, float)[:, ::-1]
    box = None if prompt.box is None else np.asarray(prompt.box, float)[[1, 0, 3, 2]]
    lab = None if prompt.labels is None else np.asarray(prompt.labels).astype(np.int32)
    return SlicePrompt(pts, lab, box).signature()
