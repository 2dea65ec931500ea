"""Loading the model (a mixin of :class:`~napari_sam_stack._widget._widget.SamStackWidget`)."""

from __future__ import annotations

from ..models import available_models
from ._compat import guard_llvm_clash
from ._controls import LOCAL
from ._report import UserError, explain_download, reported
from ._workers import Failed

DEFAULT_MODEL = "sam2.1_hiera_tiny"
LOADED = "loaded"  # item data of the model box's entry for a model loaded from elsewhere (console, --test-model)


class ModelActions:
    """The Model box: load in the background, or take a model loaded elsewhere."""

    @reported
    def load_model(self) -> None:
        """Load the model chosen in the combo box, in the background."""
        from .. import models

        guard_llvm_clash()
        name, device = self.model_combo.currentText(), self.device_combo.currentText()
        if self.model_combo.currentData() == LOADED:
            self.set_status(f"{self.model.name} is loaded: pick another model to load")
            return
        kw: dict = {"device": None if device == "auto" else device}
        if name == LOCAL:
            ckpt, cfg = self.ckpt_edit.text().strip(), self.config_edit.text().strip()
            if not ckpt:
                raise UserError("choose a checkpoint file first")
            kw["checkpoint"] = ckpt
            if cfg.endswith((".yaml", ".yml")) or "/" in cfg:
                kw["config"] = cfg
            elif cfg:
                kw["model_type"] = cfg
        else:
            kw["model"] = name
            m = self.model
            if m is not None and m.name == name and kw["device"] in (None, str(m.device)):
                # loading it again would make a new model, and with it new sessions: the objects made
                # with this one would no longer be shown (they are kept per model)
                self.set_status(f"{name} is loaded already ({m.device}): your objects stay")
                return
        self.set_status(f"loading {name} …")
        done = lambda result, cancelled=False: self._model_loaded(result, cancelled, name)  # noqa: E731
        self._start_task("model", lambda task: models.load_model(**kw), desc=f"Loading {name}", on_done=done)

    def _model_loaded(self, result, cancelled=False, name=None) -> None:
        if cancelled:
            self.set_status("model loading cancelled" + (f"; still using {self.model.name}" if self.model else ""))
        elif isinstance(result, Failed):
            self.report(explain_download(result.error, name))
        else:
            self.set_model(result)

    @reported
    def set_model(self, model) -> None:
        """Use an already-loaded :class:`~napari_sam_stack.LoadedModel` (console, tests)."""
        self.model = model
        self._show_loaded_model(model)
        self.model_label.setText(f"{model.name} ({'SAM 2' if model.family == 'sam2' else 'SAM 1'}, {model.device})")
        self.set_status("model ready: click on the object (Points layer 'SAM points')" if self.image_layer is not None
                        else "model ready: open an image (File → Open, or drag a file in) to click on")
        for panel in getattr(self, "panels", {}).values():  # e.g. segment-everything's defaults for this model
            if hasattr(panel, "model_changed"):
                panel.model_changed(model)
        if self.image_layer is not None:
            self._prompts_changed()
            self._open_read_projects()

    def _show_loaded_model(self, model) -> None:
        """The model box names the model in use: its registry entry, else an entry for it ("… (loaded)")."""
        combo = self.model_combo
        combo.blockSignals(True)
        old = combo.findData(LOADED)
        if old >= 0:
            combo.removeItem(old)
        if model.name in available_models():
            combo.setCurrentText(model.name)
        else:
            combo.insertItem(0, f"{model.name} (loaded)", LOADED)
            combo.setCurrentIndex(0)
        combo.blockSignals(False)
        self.show_local_fields(combo.currentText() == LOCAL)
