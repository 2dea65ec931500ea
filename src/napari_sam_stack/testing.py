"""Random-weight SAM / SAM 2 models at tiny sizes, written as real checkpoint files.

No pretrained weights are needed to test the plumbing: the official builders make
the networks, the weights are random (seeded), and the files go through the same
:func:`napari_sam_stack.load_model` users hit. Random weights give all-negative mask
logits, so compare logits, not thresholded masks.
"""

from __future__ import annotations

from pathlib import Path

from .models import LoadedModel, load_model

# Small enough for ~0.06 s per 256x256 frame on 2 CPU cores, big enough that every
# part of SAM 2 (FPN levels, memory attention, memory bank, object pointers) runs.
SAM2_TINY_OVERRIDES = [
    "++model.image_size=256",
    "++model.image_encoder.trunk.embed_dim=32",
    "++model.image_encoder.trunk.stages=[1,1,2,1]",
    "++model.image_encoder.trunk.global_att_blocks=[3]",
    "++model.image_encoder.neck.backbone_channel_list=[256,128,64,32]",
    "++model.memory_attention.num_layers=1",
    "++model.num_maskmem=3",
]
SAM2_BASE_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"

# SAM 1 at its real input size (1024) and decoder, with a 2-block, 32-wide encoder.
SAM1_TINY_ARCH = {"encoder_embed_dim": 32, "encoder_depth": 2, "encoder_num_heads": 2,
                  "encoder_global_attn_indexes": [1]}

OBJECT_SCORE_BIAS = 10.0
"""Added to SAM 2's object-score head so random weights say 'object present' and
real logits flow through memory (otherwise every mask becomes -1024)."""


def tiny_sam2_config(folder: str | Path, overrides: list[str] | None = None) -> Path:
    """Write the tiny SAM 2 config as a YAML file (official hiera_t + tiny overrides)."""
    from omegaconf import OmegaConf

    from ._checkpoints import sam2_config

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg, _ = sam2_config(SAM2_BASE_CONFIG, [*SAM2_TINY_OVERRIDES, *(overrides or [])], video=False)
    path = folder / "sam2_tiny_test.yaml"
    OmegaConf.save(cfg, path)
    return path


def tiny_sam2_checkpoint(folder: str | Path, seed: int = 0, object_score_bias: float = OBJECT_SCORE_BIAS):
    """Build a random tiny SAM 2 with the official builder; return ``(checkpoint, config)`` paths."""
    import torch
    from sam2.build_sam import build_sam2_video_predictor

    folder = Path(folder)
    config = tiny_sam2_config(folder)
    torch.manual_seed(seed)
    model = build_sam2_video_predictor(SAM2_BASE_CONFIG, None, device="cpu", hydra_overrides_extra=SAM2_TINY_OVERRIDES)
    head = model.sam_mask_decoder.pred_obj_score_head
    last = head.layers[-1] if hasattr(head, "layers") else head
    with torch.no_grad():
        last.bias.fill_(object_score_bias)
    path = folder / f"sam2_tiny_seed{seed}.pt"
    torch.save({"model": model.state_dict()}, path)
    return path, config


def tiny_sam1_checkpoint(folder: str | Path, seed: int = 0) -> Path:
    """Build a random tiny SAM 1 with ``segment_anything``'s builder; save it as a bare state dict."""
    import torch
    from segment_anything.build_sam import _build_sam

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = _build_sam(**SAM1_TINY_ARCH, checkpoint=None)
    path = folder / f"sam1_tiny_seed{seed}.pth"
    torch.save(model.state_dict(), path)
    return path


def load_tiny_sam2(folder: str | Path, seed: int = 0, device="cpu") -> LoadedModel:
    ckpt, config = tiny_sam2_checkpoint(folder, seed)
    return load_model(checkpoint=ckpt, config=config, device=device)


def load_tiny_sam1(folder: str | Path, seed: int = 0, device="cpu") -> LoadedModel:
    return load_model(checkpoint=tiny_sam1_checkpoint(folder, seed), model_type="auto", device=device)


def synthetic_nuclei(shape=(20, 96, 128), n_nuclei: int = 8, seed: int = 0):
    """A uint16 stack of blurred ellipsoids on a noisy background, like fluorescent nuclei.

    Returns ``(image, labels)``; labels are the ground-truth instance ids.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape, dtype=np.float32)
    image = np.zeros(shape, np.float32)
    labels = np.zeros(shape, np.uint16)
    for i in range(1, n_nuclei + 1):
        c = rng.uniform([shape[0] * 0.25, 12, 12], [shape[0] * 0.75, shape[1] - 12, shape[2] - 12])
        r = rng.uniform([shape[0] * 0.2, 6, 6], [shape[0] * 0.35, 11, 11])
        d = ((z - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((x - c[2]) / r[2]) ** 2
        inside = d <= 1
        labels[inside & (labels == 0)] = i
        image += rng.uniform(600, 1400) * np.exp(-2.0 * d)
    image += rng.normal(110, 12, shape).astype(np.float32)
    return np.clip(image, 0, 65535).astype(np.uint16), labels
