"""Per-slice image-encoder outputs, computed once.

SAM 1: the ``features`` tensor ``SamPredictor.set_image`` holds. SAM 2: the raw
``forward_image`` output (FPN levels after conv_s0/s1, positional encodings),
which serves both the 2D predictor and the video (propagation) path.

Preprocessing follows the official code exactly for uint8 frames:
- SAM 1: ``ResizeLongestSide`` + ``Sam.preprocess`` (normalise, pad to 1024).
- SAM 2 ``"video"``: PIL resize of the uint8 frame to a square, /255, ImageNet
  mean/std, as ``SAM2VideoPredictor`` loads frames. Used for stacks, so the preview
  of a click equals what propagation sees.
- SAM 2 ``"image"``: ``SAM2Transforms`` (tensor resize) as ``SAM2ImagePredictor.set_image``.
  Used for single 2D images.
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
            arr = np.array(Image.fromarray(f).convert("RGB").resize((size, size))) / 255.0
            t = torch.from_numpy(arr).permute(2, 0, 1).float()
            batch.append((t - mean) / std)
        return torch.stack(batch).to(model.device), (size, size)
    if sam2_resize == "image":
        from sam2.utils.transforms import SAM2Transforms

        tf = SAM2Transforms(resolution=size, mask_threshold=0.0)
        return tf.forward_batch(list(frames)).to(model.device), (size, size)
    raise ValueError(f"sam2_resize must be 'video' or 'image', not {sam2_resize!r}")


def encode(model: LoadedModel, frames: list[np.ndarray], sam2_resize: str = "video") -> list[Embedding]:
    """Run the image encoder on a batch of same-sized uint8 frames; one :class:`Embedding` each."""
    import torch

    original = tuple(frames[0].shape[:2])
    x, input_size = preprocess(model, frames, sam2_resize)
    with torch.inference_mode():
        if model.family == "sam":
            feats = model.module.image_encoder(x)
            return [Embedding(original, features=feats[i : i + 1], input_size=input_size) for i in range(len(frames))]
        out = model.module.forward_image(x)
    return [
        Embedding(
            original,
            backbone_fpn=[f[i : i + 1] for f in out["backbone_fpn"]],
            vision_pos_enc=[p[i : i + 1] for p in out["vision_pos_enc"]],
        )
        for i in range(len(frames))
    ]


class EmbeddingStore:
    """Embeddings of every slice of a :class:`~napari_sam_stack.normalise.Frames`, computed on demand.

    (In-memory; the persistent zarr cache builds on this interface.)
    """

    def __init__(self, frames, model: LoadedModel, sam2_resize: str = "video", cache_dir=None, in_memory: bool = True):
        self.frames = frames
        self.model = model
        self.sam2_resize = sam2_resize
        self._mem: dict[int, Embedding] = {}
        self.encoder_calls = 0

    def __len__(self) -> int:
        return len(self.frames)

    def is_computed(self, index: int) -> bool:
        return index in self._mem

    def get(self, index: int) -> Embedding:
        if index not in self._mem:
            self.compute([index])
        return self._mem[index]

    def compute(self, indices=None, progress=None, cancel=None, batch_size: int = 1) -> None:
        todo = [i for i in (range(len(self)) if indices is None else indices) if i not in self._mem]
        for done, start in enumerate(range(0, len(todo), batch_size)):
            if cancel is not None and cancel():
                return
            chunk = todo[start : start + batch_size]
            for i, emb in zip(chunk, encode(self.model, [self.frames[i] for i in chunk], self.sam2_resize)):
                self._mem[i] = emb
            self.encoder_calls += 1
            if progress is not None:
                progress(min(len(todo), start + batch_size), len(todo))
