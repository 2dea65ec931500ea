"""SAM 2's video predictor over cached per-slice features: in memory, no files, no encoder.

:class:`StackVideoPredictor` is a ``SAM2VideoPredictor`` built around an already loaded
SAM 2 module (sharing its parameters) whose frames come from an
:class:`~napari_sam_stack.embeddings.EmbeddingStore` instead of a JPEG folder: the
image encoder never runs during propagation. Everything else (prompt handling, memory
attention, memory encoder, object pointers) is the official code.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict

import torch
from sam2.sam2_video_predictor import SAM2VideoPredictor
from torch import nn


class _MemoryInCurrentDtype(nn.Module):
    """Memory attention that casts its memory to the dtype of the current frame's features.

    The video predictor stores memory features as bfloat16. Where they are concatenated
    with float32 object pointers torch promotes them to float32; where no pointer is
    available (an object prompted only on later slices) they would reach float32 weights
    as bfloat16 and fail on CPU. Casting here gives the promoted values in every case.

    While :attr:`record` is a list, calls are recorded there (their inputs, cast) instead
    of computed, and a placeholder of the output's shape is returned: the batched tracker
    (:mod:`._batch`) gathers each object's memory with the official code this way, then
    runs the attention once for every group of calls whose memory layout matches.
    """

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.record: list | None = None

    def forward(self, curr, memory, curr_pos=None, memory_pos=None, num_obj_ptr_tokens: int = 0):
        if isinstance(curr, list):
            (curr,), (curr_pos,) = curr, curr_pos
        dtype = curr.dtype
        if memory_pos is not None:
            memory_pos = memory_pos.to(dtype)
        memory = memory.to(dtype)
        if self.record is not None:
            self.record.append({"curr": curr, "curr_pos": curr_pos, "memory": memory, "memory_pos": memory_pos,
                                "num_obj_ptr_tokens": int(num_obj_ptr_tokens)})
            return torch.zeros_like(curr)  # (HW, B, C), as the real output
        return self.inner(
            curr=curr, memory=memory, curr_pos=curr_pos, memory_pos=memory_pos,
            num_obj_ptr_tokens=num_obj_ptr_tokens,
        )


def _video_defaults() -> dict:
    """The keyword defaults of ``SAM2VideoPredictor.__init__`` (fill_hole_area, ...)."""
    sig = inspect.signature(SAM2VideoPredictor.__init__)
    return {k: p.default for k, p in sig.parameters.items() if p.default is not inspect.Parameter.empty}


class StackVideoPredictor(SAM2VideoPredictor):
    """A ``SAM2VideoPredictor`` whose frames are slices of an embeddings store."""

    @classmethod
    def around(cls, module) -> StackVideoPredictor:
        """Wrap a ``SAM2Base`` (or ``SAM2VideoPredictor``) without copying its weights.

        The wrapper shares every parameter and submodule; a plain ``SAM2Base`` gets the
        video predictor's official defaults (``fill_hole_area=0``, ...).
        """
        self = cls.__new__(cls)
        self.__dict__.update(module.__dict__)
        # own registries, so replacing a submodule here leaves ``module`` untouched
        self._parameters = module._parameters.copy()
        self._buffers = module._buffers.copy()
        self._modules = module._modules.copy()
        if not isinstance(module, SAM2VideoPredictor):
            for name, value in _video_defaults().items():
                setattr(self, name, value)
        self.memory_attention = _MemoryInCurrentDtype(module.memory_attention)
        return self

    def new_state(self, store) -> dict:
        """An inference state over ``store`` (what ``init_state`` builds from a video file)."""
        rows, cols = store.frames.frame_shape
        device = self.device
        return {
            "store": store,
            "num_frames": len(store),
            "offload_video_to_cpu": False,
            "offload_state_to_cpu": False,
            "video_height": int(rows),
            "video_width": int(cols),
            "device": device,
            "storage_device": device,
            "point_inputs_per_obj": {},
            "mask_inputs_per_obj": {},
            "cached_features": {},
            "constants": {},
            "obj_id_to_idx": OrderedDict(),
            "obj_idx_to_id": OrderedDict(),
            "obj_ids": [],
            "output_dict_per_obj": {},
            "temp_output_dict_per_obj": {},
            "frames_tracked_per_obj": {},
        }

    def slice_features(self, inference_state, frame_idx):
        """``_prepare_backbone_features`` of one slice (batch 1), read once from the store.

        Kept in ``inference_state["cached_features"]`` until :meth:`keep_features` drops it.
        """
        cached = inference_state["cached_features"]
        feats = cached.get(frame_idx)
        if feats is None:
            backbone_out = inference_state["store"].get(frame_idx).backbone_out()
            feats = cached[frame_idx] = self._prepare_backbone_features(backbone_out)
        return feats

    @staticmethod
    def keep_features(inference_state, frames) -> None:
        """Forget the cached features of every slice not in ``frames``."""
        cached = inference_state["cached_features"]
        for f in [f for f in cached if f not in frames]:
            del cached[f]

    def _get_image_feature(self, inference_state, frame_idx, batch_size):
        """Features of one slice from the store, expanded to ``batch_size`` objects.

        Same return value as the official method, except the (unused) input image,
        which is None: slices are never re-encoded here.
        """
        backbone_out, feats, pos, sizes = self.slice_features(inference_state, frame_idx)
        if batch_size == 1:
            return None, backbone_out, list(feats), list(pos), sizes
        expanded = {
            "backbone_fpn": [f.expand(batch_size, -1, -1, -1) for f in backbone_out["backbone_fpn"]],
            "vision_pos_enc": [p.expand(batch_size, -1, -1, -1) for p in backbone_out["vision_pos_enc"]],
        }
        return (None, *self._prepare_backbone_features(expanded))

    def _clear_obj_non_cond_mem_around_input(self, inference_state, frame_idx, obj_idx):
        """Drop one object's non-conditioning memories around a prompted slice.

        sam2 1.1.0 calls this (when ``clear_non_cond_mem_around_input`` is on) but only
        defines the all-objects variant; this is its per-object counterpart.
        """
        r = self.memory_temporal_stride_for_eval
        outputs = inference_state["output_dict_per_obj"][obj_idx]["non_cond_frame_outputs"]
        for t in range(frame_idx - r * self.num_maskmem, frame_idx + r * self.num_maskmem + 1):
            outputs.pop(t, None)

    def add_prompt(self, state, frame_idx: int, obj_id: int, prompt) -> None:
        """Add a :class:`~napari_sam_stack.prompts.Prompt` as official users do.

        Points and box go in one ``add_new_points_or_box`` call (the box first, as SAM 2
        requires); a binary mask goes to ``add_new_mask``. Coordinates are (x, y) pixels.
        """
        if prompt.mask is not None:
            self.add_new_mask(state, frame_idx, obj_id, torch.from_numpy(prompt.mask))
            return
        self.add_new_points_or_box(
            state, frame_idx, obj_id,
            points=prompt.points, labels=prompt.labels, box=prompt.box,
            clear_old_points=True, normalize_coords=True,
        )
