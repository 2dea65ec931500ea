"""Model registry, download (pooch, known hashes), loading and device choice.

``load_model`` is the only way models enter the package: registry names, local
checkpoints (SAM 2 with a config, SAM 1 with a model type, micro-sam fine-tunes)
and already-built modules all come out as a :class:`LoadedModel`.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import _checkpoints as ck
from .errors import CheckpointError, DeviceError, DownloadError, HashMismatchError, UnknownModelError

CACHE_ENV = "NAPARI_SAM_STACK_CACHE"
"""Environment variable that moves the whole per-user cache (weights and embeddings)."""

_SAM1_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
_SAM2_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"
_DATA = Path(__file__).resolve().parent / "data"  # files shipped with the package


@dataclass(frozen=True)
class ModelSpec:
    """One downloadable checkpoint. ``sha256=None`` means no published hash is known:
    then the size (when known) is checked and the state dict must load strictly."""

    name: str
    family: str  # "sam" or "sam2"
    url: str
    sha256: str | None
    size: int | None = None
    config: str | None = None  # SAM 2 config name
    model_type: str | None = None  # SAM 1 encoder type
    bundled: str | None = None  # a file in the package's data folder: no download
    automatic: dict = field(default_factory=dict, hash=False)  # segment-everything defaults (automatic.defaults)

    @property
    def filename(self) -> str:
        return self.bundled or self.url.rsplit("/", 1)[-1]


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec, *, replace: bool = False) -> None:
    """Add a checkpoint (e.g. a lab's fine-tuned model on an internal server) to the registry."""
    if not isinstance(spec, ModelSpec):
        raise CheckpointError(f"register_model needs a ModelSpec, not {type(spec).__name__}")
    if spec.family not in ("sam", "sam2"):
        raise CheckpointError(f"family must be 'sam' or 'sam2', not {spec.family!r}")
    if spec.automatic:
        from .automatic import Params
        from .errors import AutomaticError

        try:
            Params.make(**spec.automatic)
        except AutomaticError as e:
            raise CheckpointError(f"model {spec.name!r}: its segment-everything defaults: {e}") from None
    if spec.name in _REGISTRY and not replace:
        raise CheckpointError(f"model {spec.name!r} is already registered (pass replace=True)")
    _REGISTRY[spec.name] = spec


for _spec in (
    # SHA-256 of the official files (the 6 hex digits in the file names are not a SHA-256 prefix).
    ModelSpec("sam_vit_b", "sam", _SAM1_URL + "sam_vit_b_01ec64.pth",
              "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912", 375042383, model_type="vit_b"),
    ModelSpec("sam_vit_l", "sam", _SAM1_URL + "sam_vit_l_0b3195.pth",
              "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622", None, model_type="vit_l"),
    ModelSpec("sam_vit_h", "sam", _SAM1_URL + "sam_vit_h_4b8939.pth",
              "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e", 2564550879, model_type="vit_h"),
    ModelSpec("sam2.1_hiera_tiny", "sam2", _SAM2_URL + "sam2.1_hiera_tiny.pt",
              "7402e0d864fa82708a20fbd15bc84245c2f26dff0eb43a4b5b93452deb34be69", 156008466,
              config="configs/sam2.1/sam2.1_hiera_t.yaml"),
    # No published SHA-256 known to us for these three: size is unchecked too, the
    # state dict must load strictly into the official config.
    ModelSpec("sam2.1_hiera_small", "sam2", _SAM2_URL + "sam2.1_hiera_small.pt", None,
              config="configs/sam2.1/sam2.1_hiera_s.yaml"),
    ModelSpec("sam2.1_hiera_base_plus", "sam2", _SAM2_URL + "sam2.1_hiera_base_plus.pt", None,
              config="configs/sam2.1/sam2.1_hiera_b+.yaml"),
    ModelSpec("sam2.1_hiera_large", "sam2", _SAM2_URL + "sam2.1_hiera_large.pt", None,
              config="configs/sam2.1/sam2.1_hiera_l.yaml"),
    # Ours: a 3.7 M-parameter SAM 2 trained from random init by scripts/train_nuclei.py on the stardist
    # nuclei test images (BSD-3-Clause, see data/LICENSE-stardist.txt); the weights are BSD-3-Clause like
    # this package. Shipped in the package (offline); 256 px input.
    ModelSpec("nss_nuclei_micro", "sam2", "", "7fd610beaa6fd67d663bee9debe3eb37ab95bd8517357d736cf7ab8949d02940", 14786261,
              config=str(_DATA / "nss_nuclei_micro.yaml"), bundled="nss_nuclei_micro.pt",
              # its IoU head predicts ~0.55 for good and bad masks alike (none passes 0.8): chosen on the training
              # tiles (F1 0.55 there, 0 with MICROSCOPY's), see docs/automatic.md
              automatic={"pred_iou_thresh": 0.5, "stability_score_thresh": 0.7, "multimask": False}),
):
    register_model(_spec)


def available_models() -> list[str]:
    """Names accepted by :func:`load_model`."""
    return list(_REGISTRY)


def model_spec(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownModelError(
            f"Unknown model {name!r}. Valid names: {', '.join(available_models())}. "
            "For a local file use load_model(checkpoint=..., config=...) (SAM 2) "
            "or load_model(checkpoint=..., model_type=...) (SAM 1)."
        ) from None


def cache_root() -> Path:
    """Per-user cache folder (``$NAPARI_SAM_STACK_CACHE`` overrides it)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("napari-sam-stack"))


def weights_dir() -> Path:
    return cache_root() / "weights"


# ---------------------------------------------------------------- devices


def resolve_device(device: Any = None):
    """``None``/"auto" picks cuda > mps > cpu; anything else must be available."""
    import torch

    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise DeviceError(f"{device!r} is not a torch device: use 'cpu', 'cuda', 'cuda:1', 'mps' or None.") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {device!r} requested but CUDA is not available here; use 'cpu', or no device at all (the best one here).")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) exist.")
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise DeviceError(f"device {device!r} requested but Apple MPS is not available here; use 'cpu', or no device at all (the best one here).")
    elif dev.type != "cpu":
        raise DeviceError(f"device {device!r} is not supported: use 'cpu', 'cuda' or 'mps'.")
    return dev


# ---------------------------------------------------------------- the loaded model


@dataclass
class LoadedModel:
    """A SAM or SAM 2 network ready for inference.

    ``module`` is a ``segment_anything.modeling.Sam`` (family "sam") or a
    ``sam2.modeling.sam2_base.SAM2Base`` (family "sam2"); ``identity`` names the
    weights (it keys the embeddings cache).
    """

    family: str
    module: Any
    device: Any
    name: str
    identity: str
    extra: dict = field(default_factory=dict, repr=False)

    @property
    def image_size(self) -> int:
        if self.family == "sam2":
            return int(self.module.image_size)
        return int(self.module.image_encoder.img_size)

    def __repr__(self) -> str:
        return f"LoadedModel(family={self.family!r}, name={self.name!r}, device={str(self.device)!r})"


def download_checkpoint(name: str, *, progress: bool = True) -> Path:
    """Download (once) and verify a registry checkpoint; returns its path in the cache."""
    import pooch

    spec = model_spec(name)
    if spec.bundled:
        return _bundled_checkpoint(spec)
    folder = weights_dir()
    target = folder / spec.filename
    known = f"sha256:{spec.sha256}" if spec.sha256 else None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # connect/read timeouts: a silently dropped network fails with a message instead of hanging
        downloader = pooch.HTTPDownloader(progressbar=progress, timeout=(15, 120))
        path = pooch.retrieve(spec.url, known_hash=known, fname=spec.filename, path=folder, downloader=downloader)
    except ValueError as e:
        if "hash" in str(e).lower():
            raise HashMismatchError(
                f"The file downloaded from {spec.url} does not have the expected SHA-256 {spec.sha256} "
                f"({str(e).splitlines()[0]}). It was not used; try again, or download it yourself and pass "
                f"checkpoint=... to load_model."
            ) from e
        raise
    except Exception as e:  # requests/urllib/socket errors from every layer of pooch
        raise DownloadError(
            f"Could not download {name} from {spec.url} to {target} ({type(e).__name__}: {e}). "
            f"Offline? Download the file on a connected machine, then either copy it to {target} or call "
            f"load_model(checkpoint='/path/to/{spec.filename}'"
            + (f", config={spec.config!r})" if spec.family == "sam2" else f", model_type={spec.model_type!r})")
        ) from e
    path = Path(path)
    if spec.size is not None and path.stat().st_size != spec.size:
        raise CheckpointError(f"{path} has {path.stat().st_size} bytes, expected {spec.size}: delete it and retry.")
    return path


def _bundled_checkpoint(spec: ModelSpec) -> Path:
    """A checkpoint shipped in the package, verified against its registry hash."""
    path = _DATA / spec.bundled
    if not path.is_file():
        raise CheckpointError(f"{path} (model {spec.name}) is missing from the installation: reinstall napari-sam-stack.")
    if spec.sha256 and file_sha256_cached(path) != spec.sha256:
        raise HashMismatchError(f"{path} does not have the SHA-256 registered for {spec.name}: reinstall napari-sam-stack.")
    return path


def load_model(
    model: Any = None,
    *,
    checkpoint: str | os.PathLike | None = None,
    config: str | os.PathLike | None = None,
    model_type: str | None = None,
    device: Any = None,
    overrides: list[str] | None = None,
    sha256: str | None = None,
    progress: bool = True,
) -> LoadedModel:
    """Load a SAM / SAM 2 model.

    - ``load_model("sam2.1_hiera_tiny")``: registry name, downloaded and verified once.
    - ``load_model(checkpoint="x.pt", config="configs/sam2.1/sam2.1_hiera_t.yaml")``: local SAM 2
      (``config`` may be a YAML path; when omitted it is inferred for the official sizes, else the
      ``x.yaml`` beside the checkpoint is used, as finetuning writes it).
    - ``load_model(checkpoint="x.pth", model_type="vit_b")``: local SAM 1, micro-sam fine-tunes
      included (``model_type="auto"`` infers the encoder shape).
    - ``load_model(module)``: an already-built ``Sam`` or ``SAM2Base``.

    ``overrides`` are hydra-style ``++key=value`` settings applied to a SAM 2 config;
    ``sha256`` verifies a local checkpoint.
    """
    _check_load_args(checkpoint, config, model_type, sha256)
    dev = resolve_device(device)
    if model is not None and not isinstance(model, (str, os.PathLike)):
        return _wrap_module(model, dev)
    if model is not None and checkpoint is not None:
        raise CheckpointError("Give either a registry name or checkpoint=..., not both.")
    if model is not None:
        spec = model_spec(str(model))
        path = download_checkpoint(spec.name, progress=progress)
        loaded = _load_file(path, spec.config, spec.model_type, overrides, dev, family=spec.family)
        loaded.name = spec.name
        loaded.identity = f"{spec.name}:{spec.sha256 or path.stat().st_size}" + loaded.identity
        return loaded
    if checkpoint is None:
        raise CheckpointError(
            f"load_model needs a model name (one of {available_models()}), checkpoint=... or a module.")
    path = Path(checkpoint).expanduser()
    digest = None
    if sha256 is not None:
        digest = ck.file_sha256(path) if path.is_file() else None
        if digest is not None and digest != sha256.lower():
            raise HashMismatchError(f"{path} has SHA-256 {digest}, expected {sha256}: the file is not the one you meant.")
    family = "sam2" if config is not None else ("sam" if model_type is not None else None)
    loaded = _load_file(path, config, model_type, overrides, dev, family=family)
    loaded.name = path.name
    loaded.identity = "sha256:" + (digest or file_sha256_cached(path)) + loaded.identity
    loaded.extra.update(checkpoint=str(path.resolve()), model_type=model_type)  # to rebuild it elsewhere (distributed)
    return loaded


def _check_load_args(checkpoint, config, model_type, sha256) -> None:
    """load_model's arguments, checked before any file is read."""
    for name, value in (("checkpoint", checkpoint), ("config", config)):
        if value is not None and (not isinstance(value, (str, os.PathLike)) or not str(os.fspath(value)).strip()):
            raise CheckpointError(f"{name} must be a file path, got {value!r}")
    if model_type is not None and not isinstance(model_type, str):
        raise CheckpointError(f"model_type must be a string such as 'vit_b' or 'auto', got {model_type!r}")
    if sha256 is not None and (not isinstance(sha256, str) or len(sha256) != 64
                               or any(c not in "0123456789abcdef" for c in sha256.lower())):
        raise CheckpointError(f"sha256 must be 64 hexadecimal digits, got {sha256!r}")
    if config is not None and model_type is not None:
        raise CheckpointError("config=... is for SAM 2 and model_type=... for SAM 1: give one of them, not both.")


def _load_file(path, config, model_type, overrides, dev, family=None) -> LoadedModel:
    sd = ck.read_state_dict(path)
    found = ck.family_of_state_dict(sd)
    if found is None:
        raise CheckpointError(f"{path} is neither a SAM 1 nor a SAM 2 checkpoint (unrecognised tensor names).")
    if family is not None and family != found:
        want = "SAM 2 (config=...)" if family == "sam2" else "SAM 1 (model_type=...)"
        raise CheckpointError(
            f"{path} is a {'SAM 2' if found == 'sam2' else 'SAM 1'} checkpoint but was loaded as {want}: "
            + ("pass config=... instead of model_type." if found == "sam2" else "pass model_type=... instead of config.")
        )
    if found == "sam":
        module = ck.build_sam1(sd, model_type, path)
    else:
        beside = path.with_suffix(".yaml")  # what training writes (its _target_s are checked like any config's)
        config = config or ck.sam2_config_of_state_dict(sd) or (beside if beside.is_file() else None)
        if config is None:
            raise CheckpointError(f"{path} is a SAM 2 checkpoint of a non-official size: give its config, a YAML file "
                                  f"(Python: config=...; command line: --config; training writes it beside the "
                                  f"checkpoint as {path.with_suffix('.yaml').name})")
        module = ck.build_sam2(sd, config, overrides, path)
    # the config is part of the identity (it keys cached embeddings); SAM 1's shape is in its weights
    suffix = f"|config:{ck.sam2_config_digest(config, overrides)}" if found == "sam2" else ""
    return LoadedModel(found, module.to(dev), dev, path.name, suffix, extra={"config": config, "overrides": overrides})


_HASHES: dict[tuple, str] = {}


def file_sha256_cached(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = ck.file_sha256(path)
    return _HASHES[key]


def _wrap_module(module: Any, dev) -> LoadedModel:
    from sam2.modeling.sam2_base import SAM2Base
    from segment_anything.modeling import Sam

    if isinstance(module, SAM2Base):
        family = "sam2"
    elif isinstance(module, Sam):
        family = "sam"
    else:
        raise CheckpointError(
            f"load_model(module) needs a registry name, a segment_anything Sam or a sam2 SAM2Base, "
            f"not {type(module).__name__}."
        )
    import torch

    h = hashlib.sha256()
    for k, v in module.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    module = module.to(dev).eval()
    return LoadedModel(family, module, dev, type(module).__name__, "module:" + h.hexdigest())
