"""npe2 reader for project folders (``*.sam``): napari opens a project as its image and labels.

The image comes back when the project knows its file (``Annotation.source``, a TIFF);
the labels layer carries the project path in its metadata, so a docked widget (with a
model loaded) opens the project's objects onto it. Reading loads no model and no torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._project import PROJECT_KEY


def get_reader(path):
    """The reader for a project folder, or None for anything else (napari then asks other plugins)."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    from ..project import is_project

    return read_project if is_project(path) else None


def read_project(path):
    """Layer data of a project: ``[(image, ...), (labels, {metadata: project path}, 'labels')]``."""
    from .._project_io import read_project_files
    from ..project import _read_meta, read_image

    if isinstance(path, (list, tuple)):
        path = path[0]
    folder = Path(path)
    meta = _read_meta(folder)
    labels, _ = read_project_files(folder, meta)
    settings = meta.get("session", {})
    layers = []
    source = meta.get("image", {}).get("source")
    image = None
    if source and Path(source).is_file():
        image = read_image(source)
        layers.append((image, {"name": Path(source).stem}, "image"))
    data = labels[0] if settings.get("axis") is None else labels
    if image is not None:
        data = _into_image_shape(labels, image, settings)
    layers.append((data, {"name": f"{folder.name} labels", "metadata": {PROJECT_KEY: str(folder)}}, "labels"))
    return layers


def _into_image_shape(labels: np.ndarray, image: np.ndarray, settings: dict) -> np.ndarray:
    """The (N, Y, X) labels placed into an array of the image's labels shape (other axes at their fixed index)."""
    shape = list(image.shape)
    if settings.get("channel_axis") is not None:
        del shape[settings["channel_axis"]]
    axis, fixed = settings.get("axis"), {int(k): int(v) for k, v in (settings.get("fixed") or {}).items()}
    if axis is None:
        return labels[0] if len(shape) == 2 else labels
    if len(shape) == 3 and not fixed:
        return np.moveaxis(labels, 0, axis) if axis != 0 else labels
    out = np.zeros(shape, labels.dtype)
    key: list = [slice(None)] * len(shape)
    for ax, i in fixed.items():
        key[ax] = i
    out[tuple(key)] = labels
    return out
