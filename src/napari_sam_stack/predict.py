"""2D prediction: a prompt on one slice -> masks, on a cached embedding (no encoder call).

Reproduces ``SamPredictor.predict`` (SAM 1) and ``SAM2ImagePredictor.predict`` (SAM 2)
from an :class:`~napari_sam_stack.embeddings.Embedding`: same coordinate scaling, same
prompt encoding, the same mask decoder (weights and function; computed in a cheaper order
by :mod:`._decoder`), the same upsampling chain (as two per-slice matrices). Results equal
the official predictors' to float rounding (~1e-6). The work that does not depend on the
prompt (SAM 2's feature preparation, positional encodings, the first decoder layer's image
projections, the upsampling matrices) is done once per slice and kept for the last few.

Binary mask prompts are turned into low-resolution logits the way SAM 2 turns a mask
input into logits (``SAM2Base._use_mask_as_output``): the mask is placed on the encoder's
input canvas like the image (SAM 1: longest side resized to the input size and padded
with background; SAM 2: stretched to the square), downsampled to the decoder's mask
size with antialiased bilinear interpolation, and mapped from [0, 1] to [-10, +10].
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

from .embeddings import Embedding
from .errors import PromptError
from .models import LoadedModel
from .prompts import Prompt

MASK_LOGIT_SCALE = 20.0
MASK_LOGIT_BIAS = -10.0
"""Binary mask prompt -> logits: ``mask * 20 - 10`` (SAM 2's ``sigmoid_scale/bias_for_mem_enc``)."""


@dataclass
class Prediction:
    """Result of one 2D prediction.

    ``masks``: (K, Y, X) bool at the slice's resolution; ``scores``: (K,) predicted IoU;
    ``logits``: (K, M, M) float32 low-resolution logits (M = 256 for the official model
    sizes), to pass back as ``mask=`` with the next click. With several candidates they
    are sorted by score, best first.
    """

    masks: np.ndarray
    scores: np.ndarray
    logits: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def best(self) -> int:
        """Index of the candidate with the highest predicted IoU."""
        return int(np.argmax(self.scores))

    @property
    def mask(self) -> np.ndarray:
        """The best (Y, X) mask."""
        return self.masks[self.best]

    def select(self, i: int | None = None) -> Prediction:
        """A one-candidate Prediction with candidate ``i`` (default: the best)."""
        i = self.best if i is None else int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"candidate {i} out of range: this prediction has {len(self)}")
        s = slice(i, i + 1) if i != -1 else slice(-1, None)
        return Prediction(self.masks[s], self.scores[s], self.logits[s])


def use_multimask(prompt: Prompt, multimask: bool | None) -> bool:
    """SAM's advice when ``multimask`` is None: three candidates for one point alone."""
    if multimask is not None:
        return bool(multimask)
    return prompt.n_points == 1 and prompt.box is None and prompt.mask is None


def mask_input_side(model: LoadedModel) -> int:
    """Side of the decoder's low-resolution mask logits (256 for the official models)."""
    pe = model.module.prompt_encoder if model.family == "sam" else model.module.sam_prompt_encoder
    return int(pe.mask_input_size[0])


def predict(model: LoadedModel, emb: Embedding, prompt: Prompt, multimask: bool | None = None) -> Prediction:
    """Masks for ``prompt`` on the slice encoded in ``emb``: one decoder call, no encoder."""
    import torch

    full, scores, low = _run(model, emb, prompt, use_multimask(prompt, multimask))
    with torch.inference_mode():
        order = torch.argsort(-scores[0], stable=True)
        masks = full[0, order] > _threshold(model)  # thresholded where the logits are (GPU stays GPU)
        return Prediction(
            masks.cpu().numpy(), scores[0, order].float().cpu().numpy(), low[0, order].float().cpu().numpy()
        )


def predict_logits(model: LoadedModel, emb: Embedding, prompt: Prompt, multimask: bool):
    """Full-resolution logits (K, Y, X), scores (K,) and low-res logits (K, M, M), as numpy,
    in the official predictors' candidate order."""
    full, scores, low = _run(model, emb, prompt, multimask)
    return tuple(t[0].float().cpu().numpy() for t in (full, scores, low))


def _run(model: LoadedModel, emb: Embedding, prompt: Prompt, multimask: bool):
    import torch

    with torch.inference_mode():
        if model.family == "sam":
            return _predict_sam1(model, emb, prompt, multimask)
        return _predict_sam2(model, emb, prompt, multimask)


def _threshold(model: LoadedModel) -> float:
    return float(model.module.mask_threshold) if model.family == "sam" else 0.0


# ---------------------------------------------------------------- SAM 1


def _predict_sam1(model: LoadedModel, emb: Embedding, prompt: Prompt, multimask: bool):
    import torch
    from segment_anything.utils.transforms import ResizeLongestSide

    from . import _decoder

    sam = model.module
    dev = emb.features.device
    tf = ResizeLongestSide(sam.image_encoder.img_size)
    points = boxes = None
    if prompt.points is not None:
        coords = tf.apply_coords(prompt.points, emb.original_size)
        points = (
            torch.as_tensor(coords, dtype=torch.float, device=dev)[None],
            torch.as_tensor(prompt.labels, dtype=torch.int, device=dev)[None],
        )
    if prompt.box is not None:
        boxes = torch.as_tensor(tf.apply_boxes(prompt.box, emb.original_size), dtype=torch.float, device=dev)
    masks = _mask_input(model, emb, prompt, dev)
    sparse, dense = sam.prompt_encoder(points=points, boxes=boxes, masks=masks)
    st = _per_slice(emb, model, "decoder", lambda: _slice_state(model, emb.features, None))
    if masks is not None:
        st = _decoder.with_dense(st, emb.features, dense)
    low, iou = _decoder.decode(sam.mask_decoder, st, sparse)
    low, iou = (low[:, 1:], iou[:, 1:]) if multimask else (low[:, :1], iou[:, :1])
    full = _upsample(model, emb, low)
    return full, iou, low


# ---------------------------------------------------------------- SAM 2


def _predict_sam2(model: LoadedModel, emb: Embedding, prompt: Prompt, multimask: bool):
    import torch

    from . import _decoder

    sam = model.module
    st = _per_slice(emb, model, "decoder", lambda: _sam2_state(model, emb))
    dev = st["embed"].device
    h, w = emb.original_size
    size = float(sam.image_size)
    coords, labels = [], []
    if prompt.box is not None:
        coords.append(_sam2_coords(prompt.box.reshape(1, 2, 2), h, w, size, dev))
        labels.append(torch.tensor([[2, 3]], dtype=torch.int, device=dev))
    if prompt.points is not None:
        coords.append(_sam2_coords(prompt.points[None], h, w, size, dev))
        labels.append(torch.as_tensor(prompt.labels, dtype=torch.int, device=dev)[None])
    points = (torch.cat(coords, dim=1), torch.cat(labels, dim=1)) if coords else None
    masks = _mask_input(model, emb, prompt, dev)
    sparse, dense = sam.sam_prompt_encoder(points=points, boxes=None, masks=masks)
    dec = sam.sam_mask_decoder
    if masks is not None:
        st = _decoder.with_dense(st, st["embed"], dense)
    low, iou = _decoder.decode(dec, st, sparse)
    if multimask:
        low, iou = low[:, 1:], iou[:, 1:]
    elif dec.dynamic_multimask_via_stability:
        low, iou = dec._dynamic_multimask_via_stability(low, iou)
    else:
        low, iou = low[:, :1], iou[:, :1]
    full = _upsample(model, emb, low.float())
    return full, iou, torch.clamp(low, -32.0, 32.0)


def _sam2_coords(xy: np.ndarray, h: int, w: int, size: float, dev):
    """(x, y) pixels of the slice -> the model's input frame, as ``SAM2Transforms.transform_coords``."""
    import torch

    c = torch.as_tensor(xy, dtype=torch.float, device=dev).clone()
    c[..., 0] = c[..., 0] / w
    c[..., 1] = c[..., 1] / h
    return c * size


def _prepare_sam2(model: LoadedModel, emb: Embedding) -> dict[str, Any]:
    """What ``SAM2ImagePredictor.set_image`` keeps: FPN features prepared for the decoder,
    ``no_mem_embed`` added to the lowest resolution; sizes taken from the tensors."""
    import torch

    sam = model.module
    with torch.inference_mode():
        _, feats, _, sizes = sam._prepare_backbone_features(emb.backbone_out())
        if sam.directly_add_no_mem_embed:
            feats[-1] = feats[-1] + sam.no_mem_embed
        maps = [f.permute(1, 2, 0).reshape(1, -1, *hw) for f, hw in zip(feats, sizes)]
    return {"image_embed": maps[-1], "high_res_feats": maps[:-1]}


def _sam2_state(model: LoadedModel, emb: Embedding) -> dict[str, Any]:
    feats = _prepare_sam2(model, emb)
    return {**_slice_state(model, feats["image_embed"], feats["high_res_feats"]), "embed": feats["image_embed"]}


# ---------------------------------------------------------------- shared


def _slice_state(model: LoadedModel, image_embed, high_res):
    """Prompt-independent decoder inputs of one slice (see :mod:`._decoder`)."""
    import torch

    from . import _decoder

    sam = model.module
    pe_mod, dec = (sam.prompt_encoder, sam.mask_decoder) if model.family == "sam" else (
        sam.sam_prompt_encoder, sam.sam_mask_decoder)
    with torch.inference_mode():
        _, no_mask = pe_mod(points=None, boxes=None, masks=None)  # the dense "no mask" embedding
        hr = high_res if getattr(dec, "use_high_res_features", False) else None
        return _decoder.slice_state(dec, image_embed, no_mask, _dense_pe(model, flat=True), hr)


def _dense_pe(model: LoadedModel, flat: bool = False):
    """The decoder's positional encoding of the embedding grid (prompt-independent):
    (1, C, h, w), or (h * w, C) with ``flat``; computed once per model."""
    cache = model.extra.setdefault("_predict", {})
    if "dense_pe" not in cache:
        import torch

        pe = model.module.prompt_encoder if model.family == "sam" else model.module.sam_prompt_encoder
        with torch.inference_mode():
            dense = pe.get_dense_pe()
            cache["dense_pe"] = dense
            cache["dense_pe_flat"] = dense[0].flatten(1).t().contiguous()
    return cache["dense_pe_flat" if flat else "dense_pe"]


UPSAMPLE_BY_MATMUL_MAX_SIDE = 2048
"""Up to this slice size, upsampling is two small matmuls; above, the official interpolation."""


def _upsample(model: LoadedModel, emb: Embedding, low):
    """Low-res logits (1, K, M, M) -> (1, K, Y, X) logits as the official predictors upsample them.

    SAM 1: bilinear to the encoder's input canvas, crop the padding, bilinear to the slice
    (``Sam.postprocess_masks``); SAM 2: bilinear to the slice. Bilinear resizing is
    separable and linear, so the whole chain equals ``R_y @ low @ R_x.T`` with two small
    matrices per slice, obtained by running the same interpolations on an identity matrix.
    """
    import torch.nn.functional as F

    h, w = emb.original_size
    sam = model.module
    if max(h, w) > UPSAMPLE_BY_MATMUL_MAX_SIDE:
        if model.family == "sam":
            return sam.postprocess_masks(low, emb.input_size, emb.original_size)
        return F.interpolate(low, (h, w), mode="bilinear", align_corners=False)
    ry, rx = _per_slice(emb, model, "upsample", lambda: (_resize_matrix(model, emb, 0), _resize_matrix(model, emb, 1)))
    return ry @ low @ rx.t()


def _resize_matrix(model: LoadedModel, emb: Embedding, axis: int):
    """(n_out, M) matrix of the official upsampling chain along one axis."""
    import torch
    import torch.nn.functional as F

    m = mask_input_side(model)
    dev = emb.features.device if model.family == "sam" else emb.backbone_fpn[0].device
    with torch.inference_mode():
        x = torch.eye(m, device=dev).view(1, m, m, 1)  # m unit impulses along one spatial axis
        if model.family == "sam":
            canvas = model.module.image_encoder.img_size
            x = F.interpolate(x, (canvas, 1), mode="bilinear", align_corners=False)[:, :, : emb.input_size[axis]]
        x = F.interpolate(x, (emb.original_size[axis], 1), mode="bilinear", align_corners=False)
        return x[0, :, :, 0].t().contiguous()


def _mask_input(model: LoadedModel, emb: Embedding, prompt: Prompt, dev):
    """The prompt's mask as (1, 1, M, M) decoder logits, or None."""
    import torch

    if prompt.mask is None:
        return None
    side = mask_input_side(model)
    if prompt.mask_is_logits:
        if prompt.mask.shape != (side, side):
            raise PromptError(
                f"mask logits must be {side}x{side} for this model (Prediction.logits[i]), got {prompt.mask.shape}"
            )
        return torch.as_tensor(prompt.mask, dtype=torch.float, device=dev)[None, None]
    return binary_mask_to_logits(model, prompt.mask, emb.input_size, dev)


def binary_mask_to_logits(model: LoadedModel, mask: np.ndarray, input_size=None, device=None):
    """A (Y, X) bool mask of the slice -> (1, 1, M, M) float32 logits in [-10, 10] (see module doc)."""
    import torch
    import torch.nn.functional as F

    side = mask_input_side(model)
    canvas = model.image_size
    m = torch.as_tensor(np.asarray(mask, dtype=np.float32), device=device)[None, None]
    if model.family == "sam":
        if input_size is None:
            from segment_anything.utils.transforms import ResizeLongestSide

            input_size = ResizeLongestSide.get_preprocess_shape(*mask.shape, canvas)
        m = F.interpolate(m, tuple(input_size), mode="bilinear", align_corners=False, antialias=True)
        m = F.pad(m, (0, canvas - m.shape[-1], 0, canvas - m.shape[-2]))
    else:
        m = F.interpolate(m, (canvas, canvas), mode="bilinear", align_corners=False, antialias=True)
    m = F.interpolate(m, (side, side), mode="bilinear", align_corners=False, antialias=True)
    return m * MASK_LOGIT_SCALE + MASK_LOGIT_BIAS


_SLICE_CACHE: dict[int, tuple[weakref.ref, dict]] = {}
_SLICE_CACHE_MAX = 4
_SLICE_LOCK = threading.Lock()


def _per_slice(emb: Embedding, model: LoadedModel, key: str, make):
    """Prompt-independent data of one slice for one model, kept while ``emb`` lives (the last few slices)."""
    key = (key, id(model.module))
    with _SLICE_LOCK:
        entry = _SLICE_CACHE.get(id(emb))
        if entry is None or entry[0]() is not emb:
            while len(_SLICE_CACHE) >= _SLICE_CACHE_MAX:
                _SLICE_CACHE.pop(next(iter(_SLICE_CACHE)))
            entry = (weakref.ref(emb), {})
            _SLICE_CACHE[id(emb)] = entry
        data = entry[1]
        value = data.get(key)
    if value is None:
        value = make()  # outside the lock: two threads may both compute it, both correct
        data[key] = value
    return value
