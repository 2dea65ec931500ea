"""Reading checkpoint files and building SAM / SAM 2 modules from them.

Kept apart from :mod:`napari_sam_stack.models` (registry, download, devices) so
that each file stays about one thing. Nothing here downloads.
"""

from __future__ import annotations

import hashlib
import pickle
import struct
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import CheckpointError

# Official SAM 1 image-encoder shapes (segment_anything.build_sam).
SAM1_ARCHS = {
    "vit_b": {"embed_dim": 768, "depth": 12, "num_heads": 12, "global_attn_indexes": [2, 5, 8, 11]},
    "vit_l": {"embed_dim": 1024, "depth": 24, "num_heads": 16, "global_attn_indexes": [5, 11, 17, 23]},
    "vit_h": {"embed_dim": 1280, "depth": 32, "num_heads": 16, "global_attn_indexes": [7, 15, 23, 31]},
}

# Official SAM 2.1 configs, keyed by (trunk embed_dim, blocks per stage).
SAM2_CONFIGS = {
    (96, (1, 2, 7, 2)): "configs/sam2.1/sam2.1_hiera_t.yaml",
    (96, (1, 2, 11, 2)): "configs/sam2.1/sam2.1_hiera_s.yaml",
    (112, (2, 3, 16, 3)): "configs/sam2.1/sam2.1_hiera_b+.yaml",
    (144, (2, 6, 36, 4)): "configs/sam2.1/sam2.1_hiera_l.yaml",
}

# What build_sam2_video_predictor sets on top of a config (sam2 1.1.0): the
# video-predictor class and the post-processing the official predictors use.
SAM2_VIDEO_OVERRIDES = [
    "++model._target_=sam2.sam2_video_predictor.SAM2VideoPredictor",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability=true",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta=0.05",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh=0.98",
    "++model.binarize_mask_from_pts_for_mem_enc=true",
    "++model.fill_hole_area=8",
]

# Wrappers seen around plain state dicts (micro-sam saves {"model_state": ...},
# trainers save {"model": ...} or {"state_dict": ...}); prefixes of wrapped modules.
_WRAPPER_KEYS = ("model_state", "model", "state_dict")
_PREFIXES = ("sam.", "module.", "model.")


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_state_dict(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` and unwrap it to a flat state dict."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"Checkpoint file not found: {path}. Pass the path of a downloaded .pt/.pth file, "
            "or a registry name (see napari_sam_stack.available_models())."
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        what = _refused(str(e))
        if what is None and _is_plain_pickle(path):
            raise CheckpointError(
                f"{path} is a plain Python pickle, not a torch checkpoint; pickles can hold code, so it was NOT "
                "loaded and nothing in it ran. Save the weights with torch.save(model.state_dict(), 'weights.pt')."
            ) from e
        if what is None:  # no refused reference: the bytes are not a checkpoint at all
            raise CheckpointError(
                f"{path} ({path.stat().st_size} bytes) is truncated or corrupt: it is not a torch checkpoint "
                "(nothing in it was run). Delete it and download it again."
            ) from e
        raise CheckpointError(
            f"{path} holds code ({what}) besides tensors; it was NOT loaded and nothing in it ran "
            "(checkpoints are read with torch.load(weights_only=True)). If you trust its source, re-save it "
            "as a plain state dict: torch.save(model.state_dict(), 'weights.pt')."
        ) from e
    # random bytes can make torch's weights-only unpickler fail in many ways (IndexError: pop from empty list, ...)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, IndexError, KeyError, TypeError,
            AttributeError, UnicodeDecodeError, struct.error) as e:
        raise CheckpointError(
            f"{path} ({path.stat().st_size} bytes) is truncated or corrupt and cannot be read "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no detail'}). "
            "Delete it and download it again."
        ) from e
    return unwrap_state_dict(obj, path)


def _is_plain_pickle(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(2)
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5  # PROTO opcode, protocol 2..5


def _refused(text: str) -> str | None:
    """The Python object a checkpoint's pickle names and torch's safe unpickler refused, or None."""
    import re

    m = re.search(r"unsupported global:?\s*(?:GLOBAL\s*)?([\w.]+)", text, re.IGNORECASE)
    return f"a reference to {m.group(1)}" if m else None


def unwrap_state_dict(obj: Any, path: Any = "checkpoint") -> dict[str, Any]:
    import torch

    for _ in range(3):
        if isinstance(obj, dict) and not _is_tensor_dict(obj):
            key = next((k for k in _WRAPPER_KEYS if k in obj and isinstance(obj[k], dict)), None)
            if key is None:
                break
            obj = obj[key]
    if not isinstance(obj, dict) or not obj or not _is_tensor_dict(obj):
        raise CheckpointError(f"{path} does not contain a model state dict (found {type(obj).__name__}).")
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def _is_tensor_dict(d: dict) -> bool:
    import torch

    return any(isinstance(v, torch.Tensor) for v in d.values())


def family_of_state_dict(sd: dict[str, Any]) -> str | None:
    if any(k.startswith("image_encoder.trunk.") for k in sd) or "maskmem_tpos_enc" in sd:
        return "sam2"
    if "image_encoder.patch_embed.proj.weight" in sd and any(k.startswith("mask_decoder.") for k in sd):
        return "sam"
    return None


def sam1_arch(sd: dict[str, Any]) -> dict[str, Any]:
    """Infer the ViT encoder shape of a SAM 1 state dict (works for any size, tiny test models too)."""
    embed_dim = sd["image_encoder.patch_embed.proj.weight"].shape[0]
    blocks = sorted({int(k.split(".")[2]) for k in sd if k.startswith("image_encoder.blocks.")})
    depth = len(blocks)
    head_dim = sd["image_encoder.blocks.0.attn.rel_pos_h"].shape[1]
    global_idx = [i for i in blocks if sd[f"image_encoder.blocks.{i}.attn.rel_pos_h"].shape[0] > 2 * 14 - 1]
    return {
        "embed_dim": int(embed_dim),
        "depth": depth,
        "num_heads": int(embed_dim // head_dim),
        "global_attn_indexes": global_idx,
    }


def build_sam1(sd: dict[str, Any], model_type: str | None, source: Any):
    """Build a segment_anything ``Sam`` with the official builder and load ``sd`` strictly."""
    from segment_anything.build_sam import _build_sam

    try:
        arch = sam1_arch(sd)
    except (KeyError, IndexError) as e:
        raise CheckpointError(f"{source} is not a SAM 1 (segment_anything) checkpoint: missing {e}.") from e
    if model_type is not None and model_type not in ("auto", *SAM1_ARCHS):
        raise CheckpointError(f"Unknown SAM 1 model_type {model_type!r}; use one of {sorted(SAM1_ARCHS)} or 'auto'.")
    if model_type in SAM1_ARCHS and SAM1_ARCHS[model_type] != arch:
        found = next((n for n, a in SAM1_ARCHS.items() if a == arch), f"a custom ViT ({arch})")
        raise CheckpointError(
            f"{source} is {found}, not {model_type}: pass model_type={found!r} (or 'auto')."
            if found in SAM1_ARCHS
            else f"{source} holds {found}, which does not match model_type={model_type!r}; use model_type='auto'."
        )
    sam = _build_sam(
        encoder_embed_dim=arch["embed_dim"],
        encoder_depth=arch["depth"],
        encoder_num_heads=arch["num_heads"],
        encoder_global_attn_indexes=arch["global_attn_indexes"],
        checkpoint=None,
    )
    _load_strict(sam, sd, source)
    return sam.eval()


def resolve_sam2_config(config: str | Path) -> Path:
    """A sam2 config: a YAML file on disk, or an official name such as ``configs/sam2.1/sam2.1_hiera_t.yaml``."""
    p = Path(config)
    if p.is_file():
        return p
    import sam2

    root = Path(sam2.__file__).parent
    name = str(config)
    candidates = [root / name, root / f"{name}.yaml", root / "configs" / name, root / "configs" / f"{name}.yaml"]
    for c in candidates:
        if c.is_file():
            return c
    official = sorted(str(c.relative_to(root)) for c in (root / "configs").rglob("*.yaml"))
    raise CheckpointError(f"SAM 2 config {config!r} not found: give a YAML file path or one of {official}.")


def sam2_config_of_state_dict(sd: dict[str, Any]) -> str | None:
    try:
        embed = int(sd["image_encoder.trunk.patch_embed.proj.weight"].shape[0])
    except KeyError:
        return None
    blocks = sorted({int(k.split(".")[3]) for k in sd if k.startswith("image_encoder.trunk.blocks.")})
    # A stage ends where the channel count changes: blocks with a 'proj' layer start a new stage.
    starts = [0] + [b for b in blocks if f"image_encoder.trunk.blocks.{b}.proj.weight" in sd]
    stages = tuple(b - a for a, b in zip(starts, [*starts[1:], len(blocks)]))
    return SAM2_CONFIGS.get((embed, stages))


def sam2_config(config: str | Path, overrides: list[str] | None = None, video: bool = True):
    """The OmegaConf config of ``config`` with hydra-style ``++key=value`` overrides applied
    (after the official video-predictor settings when ``video``), and its file path.

    CheckpointError for a file that is not a YAML mapping with a ``model`` section, or bad overrides.
    """
    from omegaconf import DictConfig, OmegaConf

    if not isinstance(config, (str, Path)) or not str(config).strip():
        raise CheckpointError(f"config must be a YAML file path or an official config name, got {config!r}")
    if overrides is not None and (isinstance(overrides, str) or not all(isinstance(o, str) for o in overrides)):
        raise CheckpointError(f"overrides must be a list of 'key=value' strings, got {overrides!r}")
    path = resolve_sam2_config(config)
    dotlist = [o.lstrip("+") for o in [*(SAM2_VIDEO_OVERRIDES if video else []), *(overrides or [])]]
    try:
        cfg = OmegaConf.load(path)  # a safe YAML loader: no Python tags
        if not isinstance(cfg, DictConfig) or not isinstance(cfg.get("model"), DictConfig):
            raise ValueError("it is not a mapping with a 'model' section")
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(dotlist))
    except CheckpointError:
        raise
    except Exception as e:  # yaml scanner/parser errors, unreadable or binary files, bad overrides
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"SAM 2 config {path} cannot be used: {type(e).__name__}: {detail}") from None
    return cfg, path


@lru_cache(maxsize=1)
def shipped_targets() -> frozenset[str]:
    """Every ``_target_`` in the ``model`` section of the configs shipped with sam2 (its own
    inference configs; the training configs are not loaded)."""
    from omegaconf import OmegaConf

    import sam2

    root = Path(sam2.__file__).parent
    found = {SAM2_VIDEO_OVERRIDES[0].split("=", 1)[1]}
    for p in sorted(root.rglob("*.yaml")):
        if "training" in p.relative_to(root).as_posix():
            continue
        try:
            model = OmegaConf.to_container(OmegaConf.load(p)).get("model", {})
        except Exception:  # (not a model config)
            continue
        found.update(t for _, t in _targets(model, "model") if isinstance(t, str) and t.startswith("sam2."))
    return frozenset(found)


def _targets(node, where: str):
    """(key path, value) of every ``_target_`` under ``node``, in mappings and lists (``_args_`` too)."""
    if isinstance(node, dict):
        for k, v in node.items():
            here = f"{where}.{k}"
            if k == "_target_":
                yield here, v
            else:
                yield from _targets(v, here)
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            yield from _targets(v, f"{where}[{i}]")


def _allowed_target(target) -> bool:
    """A target sam2's own configs use, or an nn.Module class defined in a ``sam2.`` module (custom
    configs): never a function, never anything reached through a module's imports (``sam2.x.os.system``)."""
    if not isinstance(target, str):
        return False
    if target in shipped_targets():
        return True
    module, _, name = target.rpartition(".")
    if not module.startswith("sam2.") or not all(part.isidentifier() for part in target.split(".")):
        return False  # (checked before anything is imported)
    import importlib

    import torch

    try:
        obj = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return False
    return isinstance(obj, type) and issubclass(obj, torch.nn.Module) and obj.__module__ == module


def check_sam2_targets(cfg, path) -> None:
    """CheckpointError naming the key of the first ``_target_`` in ``cfg.model`` that is not allowed."""
    from omegaconf import OmegaConf

    try:
        model = OmegaConf.to_container(cfg.model, resolve=True)
    except Exception as e:  # bad interpolations
        raise CheckpointError(f"SAM 2 config {path} cannot be resolved: {type(e).__name__}: {e}") from None
    for key, target in _targets(model, "model"):
        if not _allowed_target(target):
            raise CheckpointError(
                f"SAM 2 config {path}: {key} = {target!r} is not a sam2 model class; it was not instantiated "
                "(configs may only build sam2's own modules, e.g. sam2.modeling.sam2_base.SAM2Base)."
            )


def sam2_config_digest(config: str | Path, overrides: list[str] | None = None) -> str:
    """A short hash of the effective config: same weights under another config are another model."""
    from omegaconf import OmegaConf

    cfg, _ = sam2_config(config, overrides)
    return hashlib.sha256(OmegaConf.to_yaml(cfg, sort_keys=True).encode()).hexdigest()[:16]


def build_sam2(sd: dict[str, Any], config: str | Path, overrides: list[str] | None, source: Any):
    """Instantiate a SAM 2 video predictor from a config (+ overrides) and load ``sd`` strictly."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg, path = sam2_config(config, overrides)
    check_sam2_targets(cfg, path)  # before hydra sees anything
    OmegaConf.resolve(cfg)
    try:
        model = instantiate(cfg.model, _recursive_=True)
    except Exception as e:  # hydra wraps everything in its own errors
        raise CheckpointError(f"SAM 2 config {path} could not build a model: {e}") from e
    _load_strict(model, sd, source, hint=f"Is {path.name} the config that belongs to this checkpoint?")
    if getattr(model, "fill_hole_area", 0) > 0 and not _has_sam2_extension():
        # Hole filling needs sam2's compiled extension; without it sam2 skips the step and
        # warns on every frame. Switching it off gives the same numbers, without the noise.
        model.fill_hole_area = 0
    return model.eval()


def _has_sam2_extension() -> bool:
    try:
        from sam2 import _C  # noqa: F401
    except ImportError:
        return False
    return True


def _load_strict(module, sd: dict[str, Any], source: Any, hint: str = "") -> None:
    result = None
    try:
        result = module.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # size mismatches
        lines = [ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln]
        raise CheckpointError(
            f"{source} does not fit this architecture: {len(lines)} tensors have other shapes, "
            f"e.g. {lines[0] if lines else e}. {hint}".strip()
        ) from e
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{source} does not fit this architecture: {len(result.missing_keys)} missing keys "
            f"(e.g. {result.missing_keys[:3]}), {len(result.unexpected_keys)} unexpected keys "
            f"(e.g. {result.unexpected_keys[:3]}). {hint}".strip()
        )
