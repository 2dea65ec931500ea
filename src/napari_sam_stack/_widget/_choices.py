"""Which image layer, slice axis, channel, contrast and labels layer the widget works on.

A mixin of :class:`~napari_sam_stack._widget._widget.SamStackWidget` (the Image box and
the labels layer choice); a change makes a new view, hence a new session / annotation.
"""

from __future__ import annotations

from ..propagate import default_max_absent
from ._layers import role
from ._report import reported, reporting
from ._view import axis_names, default_axis, nonspatial_axes


class LayerChoices:
    """The image and labels layers offered, and the view of the chosen image."""

    def _refresh_layer_choices(self, event=None) -> None:
        from napari.layers import Image, Labels

        current = self.image_layer
        self._image_layers = [lay for lay in self.viewer.layers if isinstance(lay, Image)]
        if current is not None and current not in self._image_layers:  # the image is gone: so is the work on it
            self._cancel_task("propagate", "propagate all", "embeddings")
            self._predictor.invalidate()
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        self.image_combo.addItems([lay.name for lay in self._image_layers])
        if current in self._image_layers:
            self.image_combo.setCurrentIndex(self._image_layers.index(current))
        self.image_combo.blockSignals(False)

        target = self.target_layer
        self._label_layers = [lay for lay in self.viewer.layers if isinstance(lay, Labels) and role(lay) is None]
        self.target_combo.blockSignals(True)
        self.target_combo.clear()
        self.target_combo.addItems(["new layer", *[lay.name for lay in self._label_layers]])
        if target in self._label_layers:
            self.target_combo.setCurrentIndex(1 + self._label_layers.index(target))
        self.target_combo.blockSignals(False)
        if self.target_layer is not target:  # the target was removed
            self._on_target_changed()
        if self.image_layer is not current:
            self._on_image_changed()
        if event is not None and getattr(event, "type", "") == "inserted":
            reporting(self._open_read_projects, self.report)()

    @property
    def image_layer(self):
        i = self.image_combo.currentIndex()
        return self._image_layers[i] if 0 <= i < len(self._image_layers) else None

    @image_layer.setter
    def image_layer(self, layer) -> None:
        self.image_combo.setCurrentIndex(self._image_layers.index(layer))

    @property
    def target_layer(self):
        """The labels layer commits go to (``None``: a new one is made on the first commit)."""
        i = self.target_combo.currentIndex() - 1
        return self._label_layers[i] if 0 <= i < len(self._label_layers) else None

    @target_layer.setter
    def target_layer(self, layer) -> None:
        self._refresh_layer_choices()
        self.target_combo.setCurrentIndex(0 if layer is None else 1 + self._label_layers.index(layer))

    @reported
    def _on_target_changed(self, *_) -> None:
        """A new target: the annotation of that labels layer (the object id: its next free id)."""
        target = self.target_layer
        self._follow_target(target)
        if getattr(self, "_keep_obj_id", False):
            return  # the widget made this layer for the annotation it shows (first commit, an opened project)
        if self.model is None or self.image_layer is None or self._closed:
            if target is not None:
                self.obj_spin.setValue(int(target.data.max()) + 1)
            return
        self._current_session(block=True)
        if self._session is not None:
            self._bind_annotation()

    def _follow_contrast(self, layer) -> None:
        """Rebuild the session when the layer's contrast limits change ("layer contrast limits" mode)."""
        if self._contrast_source is not None:
            self._contrast_source.events.contrast_limits.disconnect(self._contrast_changed)
        self._contrast_source = layer
        if layer is not None:
            layer.events.contrast_limits.connect(self._contrast_changed)

    @reported
    def _on_contrast_limits(self) -> None:
        if self.contrast_combo.currentIndex() == 1 and not self._closed:
            self._prompts_changed()  # a new key: a new session; the prompts are answered again

    def _on_image_changed(self, *_) -> None:
        layer = self.image_layer
        self._follow_contrast(layer)
        self.axis_combo.blockSignals(True)
        self.channel_combo.blockSignals(True)
        self.axis_combo.clear()
        self.channel_combo.clear()
        if layer is not None:
            axes = nonspatial_axes(layer)
            if not axes:
                self.axis_combo.addItem("none (2D image)", None)
            names = axis_names(layer, self.viewer.dims.axis_labels)
            shape = layer.data[0].shape if layer.multiscale else layer.data.shape
            for ax in axes:
                what = f"{names[ax]} (axis {ax}, {shape[ax]} slices)" if names[ax] else f"axis {ax} ({shape[ax]} slices)"
                self.axis_combo.addItem(what, ax)
            if axes:
                self.axis_combo.setCurrentIndex(self.axis_combo.findData(default_axis(layer, names)))
            if layer.rgb:
                for name, c in (("RGB", None), ("red", 0), ("green", 1), ("blue", 2)):
                    self.channel_combo.addItem(name, c)
            else:
                self.channel_combo.addItem("grey (one channel per layer)", None)
        self.channel_combo.setEnabled(layer is not None and layer.rgb)
        self.axis_combo.blockSignals(False)
        self.channel_combo.blockSignals(False)
        self._on_view_changed()

    def set_axis(self, axis: int | None) -> None:
        """Choose the slice axis (layer data axis), as the combo box does."""
        self.axis_combo.setCurrentIndex(self.axis_combo.findData(axis))

    def set_channel(self, channel: int | None) -> None:
        self.channel_combo.setCurrentIndex(self.channel_combo.findData(channel))

    @reported
    def _on_view_changed(self, *_) -> None:
        layer = self.image_layer
        if layer is None:
            return
        n = len(self.current_view())
        for spin in (self.start_spin, self.stop_spin):
            spin.setRange(0, n - 1)
        self._reset_range()
        if not self._absent_chosen:
            axis = self.axis_combo.currentData()
            name = None if axis is None else axis_names(layer, self.viewer.dims.axis_labels)[axis]
            self.absent_spin.blockSignals(True)
            self.absent_spin.setValue(default_max_absent(name) or 0)  # 0: off
            self.absent_spin.blockSignals(False)
        if self.model is not None:
            self._prompts_changed()  # a new session: previews of the existing prompts are recomputed

    def _reset_range(self) -> None:
        """The whole stack: every object starts with it (a range set for one object never sticks)."""
        self.start_spin.setValue(self.start_spin.minimum())
        self.stop_spin.setValue(self.stop_spin.maximum())
