"""One training forward pass for SAM 2 and for SAM 1, with the papers' prompts and losses.

SAM 2: sam2's own training model (``training.model.sam2.SAM2Train``) runs on a view that
shares the loaded module's weights, so prompt sampling (a point, a box or the ground-truth
mask on 1-2 conditioning slices), correction clicks drawn from the error region, memory
attention over the sequence and the object-score head are exactly sam2's training code.
SAM 1 has no training code of its own upstream; its loop follows the SAM paper with
sam2's samplers (``get_next_point``, ``sample_box_points``): a first point or box, then
correction clicks, each step fed the previous low-res logits as mask prompt. Both use
sam2's ``MultiStepMultiMasksAndIous`` (focal + dice on the best of the candidate masks,
MSE on the predicted IoU, object-score loss for SAM 2) with SAM 2's weights 20:1:1:1.
"""

from __future__ import annotations

import inspect

import numpy as np
import torch
import torch.nn.functional as F

LOSS_WEIGHTS = {"loss_mask": 20.0, "loss_dice": 1.0, "loss_iou": 1.0, "loss_class": 1.0}

# sam2.1's training settings (sam2/configs/sam2.1_training/*.yaml), correction clicks per frame chosen by the caller
SAM2_TRAIN_SETTINGS = {
    "prob_to_use_pt_input_for_train": 0.5,
    "prob_to_use_box_input_for_train": 0.5,
    "num_frames_to_correct_for_train": 2,
    "rand_frames_to_correct_for_train": True,
    "num_init_cond_frames_for_train": 2,
    "rand_init_cond_frames_for_train": True,
    "add_all_frames_to_correct_as_cond": True,
    "prob_to_sample_from_gt_for_train": 0.1,
}


def loss_function(family: str, weights: dict | None = None, focal_alpha: float = 0.25):
    """sam2's loss; ``focal_alpha`` weights foreground pixels in the focal term (SAM's 0.25 favours background)."""
    from training.loss_fns import MultiStepMultiMasksAndIous

    return MultiStepMultiMasksAndIous(
        {**LOSS_WEIGHTS, **(weights or {})}, supervise_all_iou=True, iou_use_l1_loss=False, pred_obj_scores=family == "sam2",
        focal_alpha=float(focal_alpha), focal_gamma_obj_score=0.0, focal_alpha_obj_score=-1.0,
    )


def sam2_train_view(module, corrections: int, seed: int, prompted_slices: int = 2):
    """A ``SAM2Train`` sharing every parameter and submodule of ``module`` (a ``SAM2Base``).

    ``prompted_slices``: at most this many slices of a sequence are prompted (the first, then slices drawn at
    random), each with its correction clicks; all others are segmented from memory alone. sam2.1 trains
    with 2 (1-2 at random); 1 trains as the product is used: one slice prompted, propagation for the rest."""
    from training.model.sam2 import SAM2Train

    view = SAM2Train.__new__(SAM2Train)
    view.__dict__.update(module.__dict__)
    for key in ("_parameters", "_buffers", "_modules"):
        setattr(view, key, getattr(module, key).copy())
    skip = {"self", "image_encoder", "memory_attention", "memory_encoder", "freeze_image_encoder", "kwargs"}
    for name, p in inspect.signature(SAM2Train.__init__).parameters.items():
        if name not in skip and p.default is not inspect.Parameter.empty:
            setattr(view, name, p.default)
    prompted = {"num_init_cond_frames_for_train": int(prompted_slices), "num_frames_to_correct_for_train": int(prompted_slices)}
    for name, value in {**SAM2_TRAIN_SETTINGS, **prompted, "num_correction_pt_per_frame": int(corrections)}.items():
        setattr(view, name, value)
    view.rng = np.random.default_rng(seed)
    return view


def sam2_losses(view, loss_fn, x, masks) -> dict:
    """SAM 2 on a sequence: ``x`` (T, 3, S, S) frames, ``masks`` (T, O, S, S) bool."""
    from training.utils.data_utils import BatchedVideoDatapoint, BatchedVideoMetaData

    t, o, s = masks.shape[0], masks.shape[1], masks.shape[-1]
    frame = torch.arange(t, dtype=torch.int32)[:, None].expand(t, o)
    obj_to_frame = torch.stack([frame, torch.zeros_like(frame)], dim=-1).to(x.device)
    meta = BatchedVideoMetaData(
        unique_objects_identifier=torch.zeros(t, o, 3, dtype=torch.long),
        frame_orig_size=torch.full((t, o, 2), s, dtype=torch.long), batch_size=[t],
    )
    batch = BatchedVideoDatapoint(img_batch=x[:, None], obj_to_frame_idx=obj_to_frame, masks=masks,
                                  metadata=meta, dict_key="nss", batch_size=[t])
    outputs = view(batch)
    return loss_fn(outputs, masks)


def sam1_losses(sam, loss_fn, x, masks, rng: np.random.Generator, corrections: int) -> dict:
    """SAM 1 on one frame: ``x`` (1, 3, S, S) preprocessed, ``masks`` (1, O, S, S) bool on its canvas.

    Losses are taken on the decoder's low-resolution logits against the masks
    downsampled to them (the canvas-size upsampling is fixed bilinear interpolation).
    """
    from sam2.modeling.sam2_utils import get_next_point, sample_box_points

    feats = sam.image_encoder(x)
    gt = masks[0][:, None]  # (O, 1, S, S)
    o = gt.shape[0]
    low_side = sam.prompt_encoder.mask_input_size
    target = F.interpolate(gt.float(), low_side, mode="area")[:, 0] > 0.5
    boxes = points = None
    if rng.random() < 0.5:
        corners, _ = sample_box_points(gt)
        boxes = corners.reshape(o, 4).float()
    else:
        coords, labels = get_next_point(gt, None, "uniform")
        points = (coords.float(), labels.int())
    mask_input = None
    steps = {"multistep_pred_multimasks_high_res": [], "multistep_pred_ious": [], "multistep_object_score_logits": []}
    for k in range(corrections + 1):
        multimask = k == 0 and boxes is None
        sparse, dense = sam.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
        low, iou = sam.mask_decoder(
            image_embeddings=feats, image_pe=sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=multimask,
        )
        steps["multistep_pred_multimasks_high_res"].append(low)
        steps["multistep_pred_ious"].append(iou)
        steps["multistep_object_score_logits"].append(torch.ones(o, 1, device=low.device))
        best = low[torch.arange(o), iou.argmax(dim=1)][:, None]  # (O, 1, m, m)
        if k == corrections:
            break
        pred = F.interpolate(best.detach(), gt.shape[-2:], mode="bilinear", align_corners=False) > sam.mask_threshold
        new, new_labels = get_next_point(gt, pred, "uniform")
        if points is None:
            points = (new.float(), new_labels.int())
        else:
            points = (torch.cat([points[0], new.float()], 1), torch.cat([points[1], new_labels.int()], 1))
        mask_input = best.detach()
    return loss_fn([steps], target[None])
