"""What trains: all weights, the decoder, decoder + memory (SAM 2), or LoRA adapters.

LoRA (low-rank adapters, Hu et al. 2021) is added to the image encoder's attention
``qkv`` projections as a ``torch.nn.utils.parametrize`` parametrization: the weight
seen by the network is ``W + (B @ A) * alpha / rank`` with ``W`` frozen and ``B``
initialised to zero, so training starts from the original model. Exported checkpoints
carry the merged weights under the official names (:func:`merged_state_dict`).
"""

from __future__ import annotations

from torch import nn

from ..errors import TrainingError

TRAINABLE = ("all", "decoder", "decoder+memory", "lora")
"""Choices for ``trainable``: every weight; the prompt encoder and mask decoder; (SAM 2)
everything but the image encoder, i.e. also memory attention, memory encoder and object
pointers; LoRA adapters on the image encoder plus everything outside it."""


class LoRA(nn.Module):
    """A low-rank update of a linear layer's weight (a parametrization of ``weight``)."""

    def __init__(self, weight, rank: int = 4, alpha: float = 4.0):
        super().__init__()
        import torch

        out_f, in_f = weight.shape
        self.scale = alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, in_f, dtype=weight.dtype, device=weight.device))
        self.lora_b = nn.Parameter(torch.zeros(out_f, rank, dtype=weight.dtype, device=weight.device))
        nn.init.kaiming_uniform_(self.lora_a, a=5 ** 0.5)

    def forward(self, weight):
        return weight + (self.lora_b @ self.lora_a) * self.scale


def _parts(module, family: str):
    if family == "sam":
        return module.image_encoder, (module.prompt_encoder, module.mask_decoder)
    return module.image_encoder, (module.sam_prompt_encoder, module.sam_mask_decoder)


def add_lora(module, family: str, rank: int = 4) -> int:
    """Put LoRA on every ``qkv`` linear layer of the image encoder; returns how many."""
    from torch.nn.utils import parametrize

    encoder, _ = _parts(module, family)
    n = 0
    for name, sub in encoder.named_modules():
        if name.endswith("qkv") and isinstance(sub, nn.Linear) and not parametrize.is_parametrized(sub, "weight"):
            parametrize.register_parametrization(sub, "weight", LoRA(sub.weight.detach(), rank, float(rank)))
            n += 1
    return n


def set_trainable(module, family: str, trainable: str, lora_rank: int = 4) -> list:
    """Freeze/unfreeze ``module``'s parameters for ``trainable``; returns the trained parameters."""
    if trainable not in TRAINABLE:
        raise TrainingError(f"trainable must be one of {TRAINABLE}, not {trainable!r}")
    if trainable == "decoder+memory" and family != "sam2":
        raise TrainingError("trainable='decoder+memory' needs a SAM 2 model (SAM 1 has no memory); use 'decoder'")
    if trainable == "lora":
        if not add_lora(module, family, lora_rank):
            raise TrainingError("trainable='lora': this image encoder has no 'qkv' attention layers to adapt")
    encoder, decoder = _parts(module, family)
    for p in module.parameters():
        p.requires_grad_(trainable == "all")
    if trainable == "decoder":
        for part in decoder:
            part.requires_grad_(True)
    elif trainable in ("decoder+memory", "lora"):
        enc = {id(p) for p in encoder.parameters()}
        for p in module.parameters():
            p.requires_grad_(id(p) not in enc)
        if trainable == "lora":
            for name, p in encoder.named_parameters():
                p.requires_grad_(".lora_" in name)
    return [p for p in module.parameters() if p.requires_grad]


def merged_state_dict(module) -> dict:
    """``module.state_dict()`` under the official names, LoRA updates merged into the weights."""
    from torch.nn.utils import parametrize

    sd = module.state_dict()
    for name, sub in module.named_modules():
        if parametrize.is_parametrized(sub, "weight"):
            prefix = f"{name}.parametrizations.weight."
            for k in [k for k in sd if k.startswith(prefix)]:
                del sd[k]
            sd[f"{name}.weight"] = sub.weight.detach().clone()
    return {k: v.detach().cpu() for k, v in sd.items()}
