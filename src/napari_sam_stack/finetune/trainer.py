"""The training loop: samples, forward (:mod:`.steps`), AdamW, checkpoints, progress, cancel, resume."""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..models import LoadedModel
from . import checkpoint as ck
from ..errors import TrainingError
from .adapters import TRAINABLE, set_trainable
from .data import TrainingData, to_model_input
from .steps import loss_function, sam1_losses, sam2_losses, sam2_train_view

DEFAULTS = {
    "trainable": "all", "lora_rank": 4, "lr": 1e-4, "weight_decay": 0.01, "seed": 0, "steps": 1000,
    "warmup": 0.05, "sequence": (4, 8), "p_sequence": 0.5, "max_objects": 8, "corrections": 3,
    "crop": (32, 512), "clip": 0.1, "loss_weights": None, "focal_alpha": 0.25, "flips": True,
    "prompted_slices": 2,
}
"""Options of :class:`Trainer` (all stored in the resumable state). ``steps``: the run's
length (the learning rate warms up over its first ``warmup`` fraction, then decays on a
cosine to a tenth); ``sequence``: slices per SAM 2 sequence (min, max); ``p_sequence``:
share of SAM 2 steps on a sequence rather than one slice; ``corrections``: correction
clicks per corrected slice; ``crop``: side of the random crops (min, max) in pixels;
``clip``: gradient-norm clip (sam2's 0.1); ``loss_weights``: changes to SAM 2's
``{"loss_mask": 20, "loss_dice": 1, "loss_iou": 1, "loss_class": 1}`` (focal, dice, IoU, object score);
``focal_alpha``: weight of foreground pixels in the focal loss (SAM's 0.25; higher for a model from scratch
that predicts all background); ``flips``: mirror and transpose samples at random (8 views of each crop);
``prompted_slices`` (SAM 2): at most this many slices of a sequence get prompts and correction clicks (sam2.1's
2: the first and, half the time, one more); 1: only the first, every other slice from memory alone, as a
click on one slice and propagation are used (it taught the shipped micro model's tracks to end)."""


class Trainer:
    """Trains a copy of ``model``'s network on ``data`` (a :class:`TrainingData` or a list of pairs).

    The loaded model itself is left untouched. ``fit()`` runs the steps; ``export(path)``
    writes the official checkpoint; ``save_state(path)`` / :meth:`resume` continue a run.
    """

    def __init__(self, model: LoadedModel, data, **options):
        unknown = set(options) - set(DEFAULTS)
        if unknown:
            raise TrainingError(f"unknown training option(s) {sorted(unknown)}; valid: {sorted(DEFAULTS)}")
        opts = {**DEFAULTS, **options}
        opts["sequence"], opts["crop"] = tuple(int(v) for v in opts["sequence"]), tuple(int(v) for v in opts["crop"])
        if opts["trainable"] not in TRAINABLE:
            raise TrainingError(f"trainable must be one of {TRAINABLE}, not {opts['trainable']!r}")
        if int(opts["steps"]) < 1 or not float(opts["lr"]) > 0:
            raise TrainingError(f"steps must be >= 1 and lr > 0 (got steps={opts['steps']}, lr={opts['lr']})")
        if not 1 <= opts["sequence"][0] <= opts["sequence"][1]:
            raise TrainingError(f"sequence must be (min, max) slices with 1 <= min <= max, got {opts['sequence']}")
        if int(opts["prompted_slices"]) < 1:
            raise TrainingError(f"prompted_slices must be >= 1, got {opts['prompted_slices']}")
        self.options = opts
        self.data = data if isinstance(data, TrainingData) else TrainingData(data)
        self.family = model.family
        self.config_yaml = _config_yaml(model)
        import torch

        module = copy.deepcopy(model.module)
        self.params = set_trainable(module, self.family, opts["trainable"], int(opts["lora_rank"]))
        self.model = LoadedModel(self.family, module, model.device, model.name, "training:" + model.identity,
                                 extra=dict(model.extra))
        self.module = module
        self.loss_fn = loss_function(self.family, opts["loss_weights"], opts["focal_alpha"])
        self.view = (sam2_train_view(module, opts["corrections"], opts["seed"], int(opts["prompted_slices"]))
                     if self.family == "sam2" else None)
        fused = torch.device(model.device).type in ("cpu", "cuda")  # one kernel for all tensors: 5x faster on a CPU
        self.optimizer = torch.optim.AdamW(self.params, lr=float(opts["lr"]), weight_decay=float(opts["weight_decay"]),
                                           fused=True if fused else None)
        self.step_count = 0
        self.losses: list[float] = []
        self._reseed()

    # ------------------------------------------------------------------ steps
    def _reseed(self) -> None:
        """Seeds for the next step from (seed, step): a resumed run draws what the uninterrupted one would.
        torch's global generator too (sam2's prompt samplers and dropout use it)."""
        import torch

        seed = int(self.options["seed"]) * 1_000_003 + self.step_count
        self.rng = np.random.default_rng(seed)
        torch.manual_seed(seed)
        if self.view is not None:
            self.view.rng = np.random.default_rng(seed + 1)

    def _mode(self, training: bool) -> None:
        (self.view if self.view is not None else self.module).train(training)
        self.module.train(training)

    def learning_rate(self, step: int) -> float:
        total, base = int(self.options["steps"]), float(self.options["lr"])
        warm = max(1, int(total * float(self.options["warmup"])))
        if step < warm:
            return base * (step + 1) / warm
        t = min(1.0, (step - warm) / max(1, total - warm))
        return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))

    def draw(self):
        """The next random training sample (a slice, or for SAM 2 sometimes a sequence)."""
        o = self.options
        seq = self.family == "sam2" and bool(self.data.stacks) and self.rng.random() < o["p_sequence"]
        t = int(self.rng.integers(o["sequence"][0], o["sequence"][1] + 1)) if seq else 1
        return self.data.sample(self.rng, frames=t, max_objects=int(o["max_objects"]),
                                min_crop=o["crop"][0], max_crop=o["crop"][1], flips=bool(o["flips"]))

    def losses_of(self, sample) -> dict:
        """The loss terms of one sample (graph kept for backward)."""
        x, masks = to_model_input(self.model, sample)
        if self.family == "sam2":
            return sam2_losses(self.view, self.loss_fn, x, masks)
        return sam1_losses(self.module, self.loss_fn, x, masks, self.rng, int(self.options["corrections"]))

    def step(self, sample=None) -> float:
        """One optimisation step on ``sample`` (default: a fresh random one); returns the loss."""
        import torch

        sample = self.draw() if sample is None else sample
        self._mode(True)
        loss = self.losses_of(sample)["core_loss"]
        self.optimizer.zero_grad(set_to_none=True)
        if loss.requires_grad:  # not when every slice was prompted with its mask and nothing trained ran
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, float(self.options["clip"]))
            for group in self.optimizer.param_groups:
                group["lr"] = self.learning_rate(self.step_count)
            self.optimizer.step()
        self.step_count += 1
        self._reseed()
        value = float(loss.detach())
        self.losses.append(value)
        return value

    def evaluate(self, sample, seed: int = 0) -> float:
        """The loss on ``sample`` with prompts drawn from ``seed`` (no update; comparable across steps)."""
        import torch

        saved_rng, saved_view = self.rng, None if self.view is None else self.view.rng
        self.rng = np.random.default_rng(seed)
        if self.view is not None:
            self.view.rng = np.random.default_rng(seed + 1)
        cpu = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            self._mode(True)  # the training forward (prompt sampling), without gradients
            with torch.no_grad():
                return float(self.losses_of(sample)["core_loss"])
        finally:
            torch.random.set_rng_state(cpu)
            self.rng = saved_rng
            if self.view is not None:
                self.view.rng = saved_view
            self._mode(False)

    def iter_fit(self, cancel: Callable[[], bool] | None = None, *, out=None, state=None, save_every: int = 0):
        """Run until ``options['steps']`` steps are done, yielding ``(step, total, loss)`` after each.

        ``out``: the official checkpoint, ``state``: the resumable state, both written
        (atomically) every ``save_every`` steps and at the end. Stopping early (``cancel()``
        returning True, or the caller closing the generator) writes nothing more: the files
        keep their last complete save.
        """
        total = int(self.options["steps"])
        try:
            while self.step_count < total:
                if cancel is not None and cancel():
                    return
                loss = self.step()
                yield self.step_count, total, loss
                if save_every and self.step_count % save_every == 0 and self.step_count < total:
                    self.save(out=out, state=state)
        finally:
            self._mode(False)
        self.save(out=out, state=state)

    def fit(self, progress: Callable[[int, int, float], Any] | None = None, cancel: Callable[[], bool] | None = None,
            *, out=None, state=None, save_every: int = 0) -> bool:
        """:meth:`iter_fit` with ``progress(step, total, loss)``; False when ``cancel()`` stopped it."""
        for step, total, loss in self.iter_fit(cancel, out=out, state=state, save_every=save_every):
            if progress is not None:
                progress(step, total, loss)
        return self.step_count >= int(self.options["steps"])

    # ------------------------------------------------------------------ files
    def save(self, out=None, state=None) -> None:
        if out is not None:
            self.export(out)
        if state is not None:
            self.save_state(state)

    def export(self, path) -> Path:
        """The trained weights in the official format (``load_model(checkpoint=path, config=<path>.yaml)``)."""
        return ck.export(self.module, self.family, path, self.config_yaml)

    def save_state(self, path) -> Path:
        return ck.save_state(path, module=self.module, optimizer=self.optimizer, step=self.step_count,
                             family=self.family, options=self.options, config_yaml=self.config_yaml,
                             losses=self.losses)

    @classmethod
    def resume(cls, state_path, model: LoadedModel, data, **changes) -> Trainer:
        """Continue a run from its state file; ``model`` gives the architecture (the model it started from).

        ``changes`` may extend the run (``steps=...``); other options come from the state.
        """
        st = ck.read_state(state_path)
        if st["family"] != model.family:
            raise TrainingError(f"{state_path} trains a {st['family']} model, not {model.family}")
        opts = {"flips": False, **{k: v for k, v in st["options"].items() if k in DEFAULTS}}  # older states: no flips
        trainer = cls(model, data, **{**opts, **changes})
        try:
            trainer.module.load_state_dict(st["model"])
            trainer.optimizer.load_state_dict(st["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise TrainingError(f"{state_path} does not fit this model: {str(e).splitlines()[0]}") from e
        trainer.step_count, trainer.losses = int(st["step"]), list(st["losses"])
        trainer._reseed()
        return trainer


def _config_yaml(model: LoadedModel) -> str | None:
    config = model.extra.get("config")
    if model.family != "sam2" or config is None:
        return None
    from omegaconf import OmegaConf

    from .._checkpoints import sam2_config

    cfg, _ = sam2_config(config, model.extra.get("overrides"), video=False)
    return OmegaConf.to_yaml(cfg)


def train(model, pairs, *, out: str | os.PathLike, state=None, resume=None, progress=None, cancel=None,
          save_every: int = 0, **options) -> Trainer:
    """Train ``model`` (a LoadedModel or anything ``load_model`` takes) on ``pairs`` and write ``out``.

    ``pairs``: ``[(image, labels), (stack, labels, axis), ...]``; ``state``: where the resumable
    state goes; ``resume``: a state file to continue from (options come from it; ``steps``
    may be raised). Returns the :class:`Trainer` (``.fit`` already run; ``.losses``).
    """
    from ..models import load_model

    model = model if isinstance(model, LoadedModel) else load_model(model)
    data = pairs if isinstance(pairs, TrainingData) else TrainingData(pairs)
    trainer = Trainer.resume(resume, model, data, **options) if resume else Trainer(model, data, **options)
    trainer.fit(progress, cancel, out=out, state=state, save_every=save_every)
    return trainer
