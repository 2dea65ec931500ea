"""How a napari image layer maps onto a :class:`~napari_sam_stack.Session`.

A layer of shape (..., Y, X) (plus a trailing RGB(A) axis) is walked along one
non-spatial axis (z or t); every other non-spatial axis stays at one index (the
viewer's position when the session was made). Labels, previews and prompt layers
share the layer's non-RGB shape, scale and translate, so indices line up.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class SliceView:
    """The part of an image layer a session sees.

    ``axis``: layer data axis walked by the session (``None`` for a single 2D image);
    ``fixed``: ``{axis: index}`` for the other non-spatial axes; ``channel``: for RGB
    layers, one channel index (``None`` uses all three); ``contrast``: "auto"
    (volume percentiles) or "layer" (the layer's contrast limits).
    """

    layer: object
    axis: int | None
    fixed: dict[int, int] = field(default_factory=dict)
    channel: int | None = None
    contrast: str = "auto"

    # ------------------------------------------------------------------ shapes
    @property
    def data(self):
        layer = self.layer
        return layer.data[0] if getattr(layer, "multiscale", False) else layer.data

    @property
    def rgb(self) -> bool:
        return bool(getattr(self.layer, "rgb", False))

    @property
    def label_shape(self) -> tuple[int, ...]:
        """Shape of a labels array over the layer (no RGB axis)."""
        shape = tuple(int(s) for s in self.data.shape)
        return shape[:-1] if self.rgb else shape

    @property
    def ndim(self) -> int:
        return len(self.label_shape)

    def __len__(self) -> int:
        return 1 if self.axis is None else self.label_shape[self.axis]

    def key(self) -> tuple:
        """Signature of this view: a session is rebuilt when it changes."""
        return (id(self.layer), self.axis, tuple(sorted(self.fixed.items())), self.channel, self.contrast,
                self.contrast_limits())

    def contrast_limits(self) -> tuple[float, float] | None:
        """The layer's contrast limits when they map the data to 0..255 ("layer" contrast, not uint8)."""
        if self.contrast == "layer" and np.dtype(self.data.dtype) != np.uint8:
            return tuple(float(c) for c in self.layer.contrast_limits)
        return None

    # ------------------------------------------------------------------ session
    def session_kwargs(self) -> dict:
        """Keyword arguments of :class:`~napari_sam_stack.Session` for this view."""
        kw: dict = {"axis": self.axis, "fixed": dict(self.fixed)}
        if self.rgb:
            kw["channel_axis"] = -1
            if self.channel is not None:
                kw["channel"] = self.channel
        else:
            kw["channel_axis"] = None
        limits = self.contrast_limits()
        if limits is not None:
            kw["contrast_limits"] = limits
        return kw

    # ------------------------------------------------------------------ indexing
    def slice_key(self, index: int) -> tuple:
        """Index of slice ``index`` in a label-shaped array: a (Y, X) view."""
        key: list = [slice(None)] * self.ndim
        if self.axis is not None:
            key[self.axis] = int(index)
        for ax, i in self.fixed.items():
            key[ax] = i
        return tuple(key)

    def region_key(self) -> tuple:
        """Index of everything the session covers in a label-shaped array: (N, Y, X) or (Y, X)."""
        key: list = [slice(None)] * self.ndim
        for ax, i in self.fixed.items():
            key[ax] = i
        return tuple(key)

    def region_to_full(self, region_indices: tuple) -> tuple:
        """Turn ``np.nonzero`` of a region array into indices of the full label array."""
        n = len(region_indices[0])
        out, it = [], iter(region_indices)
        for ax in range(self.ndim):
            out.append(np.full(n, self.fixed[ax], np.intp) if ax in self.fixed else next(it))
        return tuple(out)

    def index_at(self, world_point) -> int:
        """Session slice index at a viewer position (``viewer.dims.point``)."""
        if self.axis is None:
            return 0
        pos = self.layer.world_to_data(world_point)
        return int(np.clip(np.round(pos[self.axis]), 0, len(self) - 1))

    def on_view(self, coords: np.ndarray) -> np.ndarray:
        """Rows of (M, ndim) layer coordinates that lie at this view's fixed indices."""
        keep = np.ones(len(coords), bool)
        for ax, i in self.fixed.items():
            keep &= np.round(coords[:, ax]) == i
        return keep

    def slice_of(self, coords: np.ndarray) -> np.ndarray:
        """Session slice index of each row of (M, ndim) layer coordinates."""
        if self.axis is None:
            return np.zeros(len(coords), int)
        return np.round(coords[:, self.axis]).astype(int)


def nonspatial_axes(layer) -> list[int]:
    """Layer axes that can be a slice axis or held fixed: all but the last two (Y, X)."""
    ndim = layer.ndim
    return list(range(max(0, ndim - 2)))


CHANNEL_NAMES = {"c", "ch", "channel", "channels"}
STACK_NAMES = ("z", "t", "time", "frame", "frames", "slice", "plane")


def axis_names(layer, viewer_labels=()) -> list[str | None]:
    """A name per layer axis: the layer's axis label, else the viewer's, else None (napari's '-1' defaults)."""
    named = lambda x: None if x is None or str(x).lstrip("-").isdigit() else str(x)  # noqa: E731
    own = list(getattr(layer, "axis_labels", ()) or ())
    viewer = list(viewer_labels)[-layer.ndim:] if viewer_labels else []
    out = []
    for ax in range(layer.ndim):
        name = named(own[ax]) if ax < len(own) else None
        if name is None and ax < len(viewer):
            name = named(viewer[ax])
        out.append(name)
    return out


def default_axis(layer, names: list[str | None]) -> int | None:
    """The slice axis to start with: one named z / t, else the last axis with more than 4 entries
    (never a channel-sized or channel-named axis), else the longest; None for a 2D image."""
    axes = nonspatial_axes(layer)
    if not axes:
        return None
    shape = SliceView(layer, None).label_shape
    lower = {ax: (names[ax] or "").lower() for ax in axes}
    for want in STACK_NAMES:
        for ax in axes:
            if lower[ax] == want:
                return ax
    usable = [ax for ax in axes if lower[ax] not in CHANNEL_NAMES] or axes
    long = [ax for ax in usable if shape[ax] > 4]
    if long:
        return long[-1]
    return max(usable, key=lambda ax: shape[ax])


def make_view(layer, axis, world_point, channel=None, contrast="auto") -> SliceView:
    """A :class:`SliceView` walking ``axis``; other non-spatial axes fixed at ``world_point``."""
    axes = nonspatial_axes(layer)
    if axis is None and axes:
        raise ValueError(f"layer {layer.name!r} has {layer.ndim} dimensions: choose the slice axis (z or t)")
    if axis is not None and axis not in axes:
        raise ValueError(f"axis {axis} is not a slice axis of layer {layer.name!r} (choose one of {axes})")
    pos = layer.world_to_data(world_point)
    view = SliceView(layer, axis, channel=channel, contrast=contrast)
    shape = view.label_shape
    fixed = {ax: int(np.clip(np.round(pos[ax]), 0, shape[ax] - 1)) for ax in axes if ax != axis}
    return SliceView(layer, axis, fixed, channel, contrast)
