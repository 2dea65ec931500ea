"""The image encoder of SAM 1 / SAM 2 on uint8 frames, preprocessed exactly as the official code.

SAM 1: the ``features`` tensor ``SamPredictor.set_image`` holds. SAM 2: the raw
``forward_image`` output (FPN levels after conv_s0/s1, positional encodings),
which serves both the 2D predictor and the video (propagation) path.

- SAM 1: ``ResizeLongestSide`` + ``Sam.preprocess`` (normalise, pad to 1024).
- SAM 2 ``"video"``: PIL resize of the uint8 frame to a square, /255, ImageNet
  mean/std, as ``SAM2VideoPredictor`` loads frames. Used for stacks, so the preview
  of a click equals what propagation sees.
- SAM 2 ``"image"``: ``SAM2Transforms`` (tensor resize) as ``SAM2ImagePredictor.set_image``.
  Used for single 2D images.

``Embedding`` and ``preprocess`` are public in :mod:`napari_sam_stack.embeddings`;
embeddings are computed through :class:`~napari_sam_stack.embeddings.EmbeddingStore`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .models import LoadedModel


@dataclass
class Embedding:
    """Encoder output of one slice, on the model's device.

    ``original_size`` is the slice's (rows, cols). SAM 1 sets ``features`` and
    ``input_size`` (the resized, unpadded size); SAM 2 sets ``backbone_fpn`` and
    ``vision_pos_enc`` (lists of (1, C, H, W) tensors, as ``forward_image`` returns).
    """

    original_size: tuple[int, int]
    features: Any = None
    input_size: tuple[int, int] | None = None
    backbone_fpn: list = field(default_factory=list)
    vision_pos_enc: list = field(default_factory=list)

    def backbone_out(self) -> dict[str, Any]:
        """The dict ``SAM2Base.forward_image`` returns (fresh lists, shared tensors)."""
        return {
            "vision_features": self.backbone_fpn[-1],
            "vision_pos_enc": list(self.vision_pos_enc),
            "backbone_fpn": list(self.backbone_fpn),
        }


# uint8 -> [0, 1] exactly as sam2's frame loader: float64 division, then float32 (a lookup table: fast).
_UNIT8 = (np.arange(256) / 255.0).astype(np.float32)


def preprocess(model: LoadedModel, frames: list[np.ndarray], sam2_resize: str = "video"):
    """uint8 (Y, X, 3) frames of one size -> the encoder's input batch (B, 3, S, S) and input size."""
    import torch

    if model.family == "sam":
        from segment_anything.utils.transforms import ResizeLongestSide

        resize = ResizeLongestSide(model.image_size)
        batch = []
        for f in frames:
            t = torch.as_tensor(resize.apply_image(f), device=model.device).permute(2, 0, 1).contiguous()
            batch.append(t)
        input_size = tuple(batch[0].shape[-2:])
        x = model.module.preprocess(torch.stack(batch).float())
        return x, input_size
    size = model.image_size
    if sam2_resize == "video":
        from PIL import Image

        mean = torch.tensor((0.485, 0.456, 0.406), dtype=torch.float32)[:, None, None]
        std = torch.tensor((0.229, 0.224, 0.225), dtype=torch.float32)[:, None, None]
        batch = []
        for f in frames:
            arr = np.array(Image.fromarray(f).convert("RGB").resize((size, size)))
            t = torch.from_numpy(_UNIT8[arr]).permute(2, 0, 1)
            batch.append((t - mean) / std)
        return torch.stack(batch).to(model.device), (size, size)
    if sam2_resize == "image":
        from sam2.utils.transforms import SAM2Transforms

        tf = SAM2Transforms(resolution=size, mask_threshold=0.0)
        return tf.forward_batch(list(frames)).to(model.device), (size, size)
    raise ValueError(f"sam2_resize must be 'video' or 'image', not {sam2_resize!r}")


def forward(model: LoadedModel, x, original: tuple[int, int], input_size) -> list[Embedding]:
    """The image encoder on a batch from :func:`preprocess`; one :class:`Embedding` per frame of ``original`` size.

    The only place the encoder runs (``EmbeddingStore`` calls it, pipelined with reading and writing).
    """
    import torch

    with torch.inference_mode():
        if model.family == "sam":
            feats = model.module.image_encoder(x)
            return [Embedding(original, features=feats[i : i + 1], input_size=input_size) for i in range(len(x))]
        out = model.module.forward_image(x)
    return [
        Embedding(
            original,
            backbone_fpn=[f[i : i + 1] for f in out["backbone_fpn"]],
            vision_pos_enc=[p[i : i + 1] for p in out["vision_pos_enc"]],
        )
        for i in range(len(x))
    ]


# ---------------------------------------------------------------- as stored in the cache


def to_arrays(model: LoadedModel, emb: Embedding, dtype: str) -> dict[str, np.ndarray]:
    """The per-slice arrays of ``emb`` as the cache stores them: SAM 1 ``features``, SAM 2 ``fpn_<k>``."""
    maps = {"features": emb.features} if model.family == "sam" else {
        f"fpn_{k}": f for k, f in enumerate(emb.backbone_fpn)}
    return {k: v[0].detach().cpu().float().numpy().astype(dtype, copy=False) for k, v in maps.items()}


def level_tensors(model: LoadedModel, arrays: dict[str, np.ndarray], prefix: str) -> list:
    """``arrays[f"{prefix}_0"], ...`` as (1, C, H, W) float32 tensors on the model's device."""
    import torch

    n = sum(1 for k in arrays if k.startswith(prefix + "_"))
    return [torch.from_numpy(np.ascontiguousarray(arrays[f"{prefix}_{k}"])).to(model.device, torch.float32)[None]
            for k in range(n)]


def from_arrays(model: LoadedModel, arrays: dict[str, np.ndarray], original, *, input_size=None, pos=None) -> Embedding:
    """The :class:`Embedding` of arrays from :func:`to_arrays` (SAM 2: with the shared ``pos`` encodings)."""
    if model.family == "sam":
        return Embedding(original, features=level_tensors(model, {"f_0": arrays["features"]}, "f")[0],
                         input_size=input_size)
    return Embedding(original, backbone_fpn=level_tensors(model, arrays, "fpn"), vision_pos_enc=list(pos))
