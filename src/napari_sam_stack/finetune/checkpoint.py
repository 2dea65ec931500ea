"""Checkpoints a training run writes, always atomically (temp file + rename).

- :func:`export`: the official format, read by ``load_model(checkpoint=...)`` and by the
  official builders: SAM 2 ``{"model": state_dict}``, SAM 1 a bare state dict; LoRA
  updates merged into the weights. SAM 2 gets its config written next to it (``.yaml``).
- :func:`save_state` / :func:`read_state`: our resumable training state (weights as
  trained, optimizer, step, options), loadable with ``torch.load(weights_only=True)``.

A write that is interrupted (cancelled, killed, disk full) leaves the previous file as it was.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

from ..errors import TrainingError
from .adapters import merged_state_dict

STATE_FORMAT = "napari-sam-stack-train/1"


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temp file in the target folder, flushed, then renamed over ``path``."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        _chmod_default(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _chmod_default(path) -> None:
    """mkstemp makes 0600 files; give the permissions a plain ``open`` would (umask applied)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def write_text_atomic(text: str, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    _chmod_default(tmp)
    os.replace(tmp, path)


def export(module, family: str, path: str | os.PathLike, config_yaml: str | None = None) -> Path:
    """Write ``module``'s weights in the official format (see module doc); returns ``path``."""
    sd = merged_state_dict(module)
    path = save_atomic({"model": sd} if family == "sam2" else sd, path)
    if family == "sam2" and config_yaml:
        write_text_atomic(config_yaml, path.with_suffix(".yaml"))
    return path


def save_state(path, *, module, optimizer, step: int, family: str, options: dict, config_yaml: str | None,
               losses: list[float]) -> Path:
    return save_atomic({
        "format": STATE_FORMAT, "family": family, "step": int(step), "options": dict(options),
        "config_yaml": config_yaml or "", "model": module.state_dict(), "optimizer": optimizer.state_dict(),
        "losses": [float(v) for v in losses],
    }, path)


def read_state(path) -> dict:
    """A training state written by :func:`save_state` (``weights_only``: nothing is unpickled)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"training state {path} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        raise TrainingError(f"{path} is not a readable training state ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise TrainingError(
            f"{path} is not a napari-sam-stack training state (format {STATE_FORMAT}); "
            "to start from exported weights, load them with load_model and train from there"
        )
    return state
