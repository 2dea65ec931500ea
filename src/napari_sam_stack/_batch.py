"""One tracking step of many (slice, object) pairs through SAM 2, batched without changing a number.

``SAM2VideoPredictor`` runs ``_run_single_frame_inference`` once per object and slice
(batch size 1). :func:`track` gives each pair the same result while running SAM 2's heavy
parts once per batch:

1. every slice's backbone features are read from the store and flattened once
   (``StackVideoPredictor.slice_features``), whatever the number of objects on it;
2. each pair's memory (conditioning slices, recent memories, object pointers) is gathered
   by the official ``_prepare_memory_conditioned_features`` with the memory attention in
   recording mode (``_MemoryInCurrentDtype.record``): nothing is computed yet;
3. the recorded calls are grouped by memory layout (number of memory tokens and of
   object-pointer tokens; the attention has no padding mask, so only equal layouts can be
   stacked exactly) and each group runs through the memory attention as one batch; a pair
   alone in its layout runs alone, as officially;
4. the mask decoder (``_forward_sam_heads``) and the memory encoder (``_encode_new_memory``)
   run once on all pairs; both treat batch entries independently (the memory encoder's
   cross-object ``non_overlap_masks_for_mem_enc`` is the exception: with it set, each pair
   is encoded alone, as the official batch of one does).

What each pair stores is what ``_run_single_frame_inference`` stores (bfloat16 memory
features, the shared memory positional encoding), in tensors of its own, so dropping one
pair's output frees it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Item:
    """One object on one slice: its output dict (``output_dict_per_obj[obj_idx]``), the slice, the direction."""

    output_dict: dict
    frame: int
    reverse: bool


def track(predictor, state, items: list[Item], max_batch: int = 16) -> list[tuple[dict, Any]]:
    """Track every item (non-conditioning slices); return ``(stored output, low-res logits)`` per item.

    ``max_batch`` bounds the pairs run through one memory-attention / decoder call.
    """
    results: list[tuple[dict, Any]] = []
    for k in range(0, len(items), max(1, int(max_batch))):
        results += _track_chunk(predictor, state, items[k : k + max_batch])
    return results


def _track_chunk(predictor, state, items: list[Item]) -> list[tuple[dict, Any]]:
    feats = {it.frame: predictor.slice_features(state, it.frame) for it in items}
    pix = _memory_conditioned(predictor, state, items, feats)
    sizes = feats[items[0].frame][3]
    high_res = None
    if len(sizes) > 1:  # the decoder's high-resolution levels, (HW)BC -> BCHW, once per slice
        per_slice = {
            f: [x.permute(1, 2, 0).view(x.size(1), x.size(2), *s) for x, s in zip(v[1][:-1], sizes[:-1])]
            for f, v in feats.items()
        }
        high_res = [_cat([per_slice[it.frame][lvl] for it in items], 0) for lvl in range(len(sizes) - 1)]
    sam = predictor._forward_sam_heads(
        backbone_features=_cat(pix, 0), point_inputs=None, mask_inputs=None, high_res_features=high_res,
        multimask_output=predictor._use_multimask(False, None),
    )
    _, _, _, low_res, high_res_masks, obj_ptr, scores = sam
    top = [feats[it.frame][1][-1] for it in items]  # (HW, 1, C) per item
    memories = _encode_memories(predictor, top, sizes, high_res_masks, scores)
    if predictor.fill_hole_area > 0:
        from sam2.utils.misc import fill_holes_in_mask_scores

        low_res = fill_holes_in_mask_scores(low_res, predictor.fill_hole_area)
    storage = state["storage_device"]
    out = []
    for j in range(len(items)):
        mem_feats, mem_pos = memories[j] if memories is not None else (None, None)
        if mem_feats is not None:
            mem_feats = mem_feats.to(torch.bfloat16, copy=True).to(storage, non_blocking=True)
        stored = {
            "maskmem_features": mem_feats,
            "maskmem_pos_enc": predictor._get_maskmem_pos_enc(state, {"maskmem_pos_enc": mem_pos}),
            "pred_masks": None,  # nothing reads a non-conditioning slice's mask while tracking
            "obj_ptr": obj_ptr[j : j + 1].clone(),
            "object_score_logits": scores[j : j + 1].clone(),
        }
        out.append((stored, low_res[j : j + 1]))
    return out


def _cat(tensors: list, dim: int):
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim)


def _memory_conditioned(predictor, state, items: list[Item], feats: dict) -> list:
    """Each item's memory-conditioned features (1, C, H, W), the attention run per layout group."""
    attention = predictor.memory_attention
    calls: list[dict] = []
    pix: list = [None] * len(items)
    waiting: list[int] = []
    attention.record = calls
    try:
        for j, it in enumerate(items):
            _, vision, pos, sizes = feats[it.frame]
            before = len(calls)
            p = predictor._prepare_memory_conditioned_features(
                frame_idx=it.frame, is_init_cond_frame=False, current_vision_feats=vision[-1:],
                current_vision_pos_embeds=pos[-1:], feat_sizes=sizes[-1:], output_dict=it.output_dict,
                num_frames=state["num_frames"], track_in_reverse=it.reverse,
            )
            if len(calls) == before:
                pix[j] = p  # no memory attention (num_maskmem == 0): the official result as it is
            else:
                waiting.append(j)
    finally:
        attention.record = None
    groups: dict[tuple, list[int]] = {}
    for k, call in enumerate(calls):
        key = (tuple(call["memory"].shape), call["num_obj_ptr_tokens"], tuple(call["curr"].shape))
        groups.setdefault(key, []).append(k)
    for members in groups.values():
        batch = {name: _cat([calls[k][name] for k in members], 1) for name in ("curr", "curr_pos", "memory", "memory_pos")}
        fused = attention.inner(**batch, num_obj_ptr_tokens=calls[members[0]]["num_obj_ptr_tokens"])
        for b, k in enumerate(members):
            j = waiting[k]
            h, w = feats[items[j].frame][3][-1]
            pix[j] = fused[:, b : b + 1].permute(1, 2, 0).reshape(1, -1, h, w)  # (HW)BC -> BCHW
    return pix


def _encode_memories(predictor, top: list, sizes, high_res_masks, scores):
    """Memory features and positional encodings per item (None when the model keeps no memory)."""
    if predictor.num_maskmem <= 0:
        return None
    if predictor.non_overlap_masks_for_mem_enc and len(top) > 1:
        # cross-object in a batch: officially every object is encoded in a batch of one
        parts = [
            predictor._encode_new_memory(
                current_vision_feats=[top[j]], feat_sizes=sizes, pred_masks_high_res=high_res_masks[j : j + 1],
                object_score_logits=scores[j : j + 1], is_mask_from_pts=False,
            )
            for j in range(len(top))
        ]
        return [(f, list(pos)) for f, pos in parts]
    feats, pos = predictor._encode_new_memory(
        current_vision_feats=[_cat(top, 1)], feat_sizes=sizes, pred_masks_high_res=high_res_masks,
        object_score_logits=scores, is_mask_from_pts=False,
    )
    return [(feats[j : j + 1], [p[j : j + 1] for p in pos]) for j in range(len(top))]
