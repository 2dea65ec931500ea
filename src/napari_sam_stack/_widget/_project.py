"""Save / open a project from the widget, autosave, and the offer to restore an autosave.

A mixin of :class:`~napari_sam_stack._widget._widget.SamStackWidget`. Opening a project
never touches an existing labels layer: its labels become a new labels layer (or the one
napari's reader made from the project), whose data is the opened annotation's labels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._current import layer_key
from ._layers import make_labels_layer
from ._report import UserError, reported

PROJECT_KEY = "napari_sam_stack_project"  # labels layer metadata: the project folder it was read from
AUTOSAVE_CHECK_MS = 30_000


class ProjectActions:
    """Save, open, autosave, restore."""

    def _init_project(self) -> None:
        from qtpy.QtCore import QTimer

        self._autosave_offer = None  # (annotation, path) of an autosave the user may restore
        self._autosave_timer = QTimer(self, interval=AUTOSAVE_CHECK_MS)
        self._autosave_timer.timeout.connect(self.autosave_now)
        self._autosave_timer.start()
        self.save_button.clicked.connect(lambda *_: self.save_project())
        self.open_button.clicked.connect(lambda *_: self.open_project())
        self.restore_button.clicked.connect(lambda *_: self.restore_autosave())

    @reported
    def autosave_now(self, force: bool = False) -> list:
        """Give every annotation of this widget the chance to autosave (``maybe_autosave``); the timer calls this."""
        written = []
        for a in list(self._annotations.values()):
            if a.objects or a.labels.any():
                path = a.maybe_autosave(force=force)
                if path is not None:
                    written.append(path)
        return written

    @reported
    def save_project(self, path=None, overwrite: bool = False):
        """Save the annotation as a project folder (a ``.sam`` folder; the folder picker asks where)."""
        from qtpy.QtWidgets import QFileDialog

        a = self.annotation
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Save project (folder)", str(a.project_path or ""),
                                                  "napari-sam-stack project (*.sam)")
            if not path:
                return None
            path = path if path.endswith(".sam") else path + ".sam"
        from ..errors import OtherProjectError

        try:
            out = a.save(path, overwrite=overwrite)
        except OtherProjectError:
            if not self.confirm(f"{Path(path).name} is another project. Replace it with this one?"):
                self.set_status(f"not saved: {Path(path).name} is another project (kept as it was)")
                return None
            out = a.save(path, overwrite=True)
        self.set_status(f"saved {len(a.objects)} object(s) to {out}")
        return out

    @reported
    def open_project(self, path=None, labels_layer=None):
        """Open a project onto the chosen image layer: its objects, prompts, statuses and labels come back.

        A project of another image, a damaged one, or one of another model is refused with
        a message; nothing in the viewer changes then.
        """
        from qtpy.QtWidgets import QFileDialog

        from ..annotation import Annotation

        if path is None:
            path = QFileDialog.getExistingDirectory(self, "Open project (a .sam folder)")
            if not path:
                return None
        if self.model is None:
            raise UserError("load the project's model first (Model → Load model), then open the project")
        from ..errors import OtherModelError

        view = self.current_view()
        try:
            b = Annotation.open(path, image=view.data, model=self.model)
        except OtherModelError as e:
            if not self.confirm(f"{e.args[0].split(':')[0]}.\n\nContinue with the loaded model {self.model.name!r}? "
                                "(saved masks and labels are kept; new predictions use this model)"):
                raise
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # the question said it
                b = Annotation.open(path, image=view.data, model=self.model, allow_model_change=True)
        self._show_opened(b, view, labels_layer, name=f"{Path(path).name} labels")
        self.set_status(f"opened {path}: {len(b.objects)} object(s)")
        return b

    def _show_opened(self, b, view, labels_layer, name: str) -> None:
        """Make the opened annotation ``b`` the widget's: its session, its labels as a labels layer."""
        s = b.session
        if view.axis != s.axis:
            self.set_axis(s.axis)
            view = self.current_view()
        if labels_layer is not None and tuple(labels_layer.data.shape) == view.label_shape:
            data = labels_layer.data
            data[view.region_key()] = b.labels.reshape(data[view.region_key()].shape)
        elif view.axis is not None and not view.fixed:
            data = b.labels  # (N, Y, X) is the layer's shape: the layer holds the annotation's own array
        else:
            data = np.zeros(view.label_shape, b.labels.dtype)
            data[view.region_key()] = b.labels.reshape(data[view.region_key()].shape)
        region = data[view.region_key()]
        if view.axis is None:
            region = region[None]
        b.labels = region  # the layer's data, so commits through the layer and the annotation agree
        key = (view.key(), id(self.model))
        self._switch_view(view, key)
        self._session, self._session_key, self._building_key = s, key, None
        target = labels_layer if labels_layer is not None else make_labels_layer(self.viewer, view, name, data=data)
        self._annotations[(key, layer_key(target))] = b
        self._target_of[id(b)] = target
        self._keep_obj_id = True
        try:
            self.target_layer = target
        finally:
            self._keep_obj_id = False
        self._bind_annotation()  # b: found under that key
        self._offer_autosave(newer_than=b.project_path)

    def confirm(self, question: str) -> bool:
        """Ask the user yes / no (a dialog)."""
        from qtpy.QtWidgets import QMessageBox

        answer = QMessageBox.question(self, "napari-sam-stack", question)
        return answer == QMessageBox.StandardButton.Yes

    # ------------------------------------------------------------------ autosave offer
    def _offer_autosave(self, newer_than=None) -> None:
        """Offer to restore the image's newest autosave (a button, a notification): for a fresh annotation,
        or for a project just opened (``newer_than``: its folder) when the autosave was written after it."""
        a = self._annotation
        self._autosave_offer = None
        self.restore_button.setVisible(False)
        if a is None or (newer_than is None and (a.objects or a.labels.any())):
            return
        from ..project import latest_autosave

        path = latest_autosave(a, project=newer_than)
        if path is None or path == getattr(a, "_autosaved_to", None):
            return
        self._autosave_offer = (a, path)
        self.restore_button.setText("Restore autosave")
        self.restore_button.setToolTip(f"{path}")
        self.restore_button.setVisible(True)
        # the notice waits for the event loop: a viewer that is closing removes its layers one by one (the
        # labels layer first makes a fresh annotation here), and a closing viewer has no one to tell
        from qtpy.QtCore import QTimer

        QTimer.singleShot(0, self._tell_autosave)

    def _drop_autosave_offer(self) -> None:
        """The user works on the annotation the offer was for: the offer is over (a restore now would
        replace that work, and the newest autosave soon is this work itself)."""
        if self._autosave_offer is not None and self._autosave_offer[0] is self._annotation:
            self._autosave_offer = None
            self.restore_button.setVisible(False)

    def _tell_autosave(self) -> None:
        try:
            offer, layer = self._autosave_offer, self.image_layer
        except RuntimeError:  # the widget was deleted meanwhile
            return
        if offer is None or getattr(self, "_closed", False) or layer is None or layer not in self.viewer.layers:
            return
        if offer[0] is not self._annotation or offer == getattr(self, "_told_offer", None):
            return  # (told once per offer)
        self._told_offer = offer
        from napari.utils.notifications import show_info

        show_info("An autosave of this image exists: press 'Restore autosave' in the SAM widget to continue it.")

    @reported
    def restore_autosave(self):
        """Open the autosave offered for this image (into a new labels layer)."""
        if self._autosave_offer is None:
            raise UserError("no autosave to restore for this image")
        from ..annotation import Annotation

        _, path = self._autosave_offer
        view = self.current_view()
        b = Annotation.open(path, image=view.data, model=self.model)
        self._show_opened(b, view, None, name="SAM labels (restored)")
        self.set_status(f"restored the autosave: {len(b.objects)} object(s)")
        return b

    # ------------------------------------------------------------------ napari's reader
    def _open_read_projects(self) -> None:
        """A labels layer napari's reader made from a project: open its objects (once a model is loaded)."""
        if self.model is None or self.image_layer is None:
            return
        for layer in list(self.viewer.layers):
            path = getattr(layer, "metadata", {}).get(PROJECT_KEY)
            if path and layer_key(layer) not in self._opened_layers:
                self._opened_layers.add(layer_key(layer))
                self.open_project(path, labels_layer=layer)
