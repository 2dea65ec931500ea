"""Training samples from (image or stack, instance labels) pairs.

Images go through :class:`~napari_sam_stack.normalise.Frames` (the volume-wide contrast
inference uses) and :func:`~napari_sam_stack.embeddings.preprocess` (the official
resizing and normalisation), so the network is trained on exactly what it sees later.
A sample is a random crop (random size and aspect, stretched to the model's square
input like SAM 2 stretches every frame) of one slice, or of 4-8 consecutive slices of
a stack (either direction) for SAM 2's memory; its objects are up to ``max_objects``
label ids present on the sample's first slice, each a binary mask per slice. Single slices
are drawn in proportion to their area.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ImageError, TrainingError
from ..normalise import Frames


@dataclass
class Sample:
    """One training item: ``frames`` (T, Y, X, 3) uint8 crops and ``masks`` (T, O, Y, X) bool."""

    frames: np.ndarray
    masks: np.ndarray


class TrainingData:
    """Pairs of images and instance labels to draw samples from.

    ``pairs``: ``(image, labels)`` or ``(image, labels, axis)`` tuples; ``axis`` (default
    0 for 3D labels, None for 2D) is the slice axis of ``image``, which may also be a
    :class:`~napari_sam_stack.normalise.Frames` (e.g. ``session.frames``); ``labels`` has the
    shape (slices, Y, X) or (Y, X) of the frames. Extra keywords go to ``Frames``
    (``channel``, ``contrast_limits``...). Slices without any label are never drawn.
    """

    def __init__(self, pairs, **frames_options):
        self.items: list[tuple[list[np.ndarray], np.ndarray]] = []
        for k, pair in enumerate(pairs):
            if len(pair) not in (2, 3):
                raise ImageError(f"training pair {k}: give (image, labels) or (image, labels, axis)")
            image, labels = pair[0], np.asarray(pair[1])
            if labels.dtype.kind not in "biu":
                raise ImageError(f"training pair {k}: labels must be integers (instance ids), not {labels.dtype}")
            axis = pair[2] if len(pair) == 3 else (0 if labels.ndim == 3 else None)
            frames = image if isinstance(image, Frames) else Frames(image, axis, **frames_options)
            lab = labels if labels.ndim == 3 else labels[None]
            if lab.ndim != 3 or lab.shape != (len(frames), *frames.frame_shape):
                raise ImageError(
                    f"training pair {k}: labels of shape {labels.shape} do not fit the image's "
                    f"{len(frames)} slice(s) of {frames.frame_shape}"
                )
            self.items.append(([frames[i] for i in range(len(frames))], lab))
        self.labelled = [(k, i) for k, (_, lab) in enumerate(self.items) for i in range(len(lab)) if lab[i].any()]
        if not self.labelled:
            raise TrainingError("no labelled slice in the training data: paint or commit some objects first")
        self.stacks = [k for k, (_, lab) in enumerate(self.items) if len(lab) >= 2]
        # single slices are drawn in proportion to their area: one large image is not outweighed by the
        # many small slices of a stack (a 512 x 256 image beside 15 slices of 61 x 57 was drawn 1 time in 16)
        area = np.array([float(np.prod(self.items[k][1].shape[1:])) for k, _ in self.labelled])
        self.slice_p = area / area.sum()

    def _windows(self, k: int, frames: int):
        """(first slice, direction) of every window of ``frames`` slices of stack ``k`` starting on a labelled slice."""
        lab = self.items[k][1]
        n = len(lab)
        t = min(frames, n)
        for i in range(n):
            if lab[i].any():
                if i + t <= n:
                    yield i, 1
                if i - t + 1 >= 0:
                    yield i, -1

    def sample(self, rng: np.random.Generator, *, frames: int = 1, max_objects: int = 8,
               min_crop: int = 32, max_crop: int = 512, flips: bool = False) -> Sample:
        """A random crop of one slice (``frames=1``) or of ``frames`` consecutive slices.

        ``flips``: also mirror the crop (rows, columns) and swap its axes at random, the same
        for every slice of a sequence: 8 views of each crop (SAM 2 trains with random flips).
        """
        if frames > 1:  # a window of consecutive slices whose first slice (in the direction of travel) has labels
            windows = [(k, i, d) for k in self.stacks for i, d in self._windows(k, frames)]
            if not windows:
                raise TrainingError("sequences need a stack with at least 2 slices and a labelled slice")
            k, first, step = windows[int(rng.integers(len(windows)))]
            t = min(frames, len(self.items[k][1]))
            idx = [first + step * j for j in range(t)]
        else:
            k, i = self.labelled[int(rng.choice(len(self.labelled), p=self.slice_p))]
            idx = [i]
        images, lab = self.items[k]
        h, w = lab.shape[1:]
        for attempt in range(21):  # a crop whose first slice has an object (the whole slice at last)
            ch = int(rng.integers(min(min_crop, h), min(max_crop, h) + 1)) if attempt < 20 else h
            cw = int(np.clip(ch * np.exp(rng.uniform(-0.3, 0.3)), min(min_crop, w), min(max_crop, w)))
            cw = cw if attempt < 20 else w
            r, c = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
            first = lab[idx[0], r:r + ch, c:c + cw]
            ids = np.unique(first[first > 0])
            if len(ids):
                break
        ids = rng.permutation(ids)[:max_objects]
        crop = lab[idx][:, r:r + ch, c:c + cw]
        sample = Sample(
            frames=np.stack([images[i][r:r + ch, c:c + cw] for i in idx]),
            masks=crop[:, None] == ids[None, :, None, None],
        )
        return _flipped(sample, rng) if flips else sample


def _flipped(sample: Sample, rng: np.random.Generator) -> Sample:
    """``sample`` mirrored along rows and/or columns and possibly transposed (one of 8 views)."""
    frames, masks = sample.frames, sample.masks  # (T, Y, X, 3), (T, O, Y, X)
    flip_rows, flip_cols, swap = (bool(v) for v in rng.integers(0, 2, size=3))
    if flip_rows:
        frames, masks = frames[:, ::-1], masks[:, :, ::-1]
    if flip_cols:
        frames, masks = frames[:, :, ::-1], masks[..., ::-1]
    if swap:
        frames, masks = frames.transpose(0, 2, 1, 3), masks.transpose(0, 1, 3, 2)
    return Sample(frames=np.ascontiguousarray(frames), masks=np.ascontiguousarray(masks))


def to_model_input(model, sample: Sample) -> tuple[Any, Any]:
    """(T, 3, S, S) normalised frames and (T, O, S, S) bool masks at the model's input size."""
    import torch
    import torch.nn.functional as F

    from .._encoder import preprocess

    x, _ = preprocess(model, list(sample.frames), sam2_resize="video")
    size = x.shape[-2:] if model.family == "sam2" else _sam1_canvas(sample.frames.shape[1:3], model.image_size)
    m = torch.as_tensor(sample.masks, dtype=torch.float32)
    m = F.interpolate(m, tuple(size), mode="nearest") > 0.5
    if model.family == "sam":  # SAM 1 pads the resized image to its square canvas
        m = F.pad(m, (0, x.shape[-1] - m.shape[-1], 0, x.shape[-2] - m.shape[-2]))
    return x, m.to(x.device)


def _sam1_canvas(shape, side: int):
    from segment_anything.utils.transforms import ResizeLongestSide

    return ResizeLongestSide.get_preprocess_shape(shape[0], shape[1], side)
