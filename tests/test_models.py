"""load_model: registry, download with hash check, local checkpoints, modules, devices, bad input."""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path

import pytest
import torch

import napari_sam_stack as nss
from napari_sam_stack.errors import (
    CheckpointError,
    DeviceError,
    DownloadError,
    HashMismatchError,
    UnknownModelError,
)
from napari_sam_stack.models import ModelSpec, file_sha256_cached, model_spec


def _same_weights(module, state_dict):
    own = module.state_dict()
    assert set(own) == set(state_dict)
    for k, v in state_dict.items():
        assert torch.equal(own[k].cpu(), v), k


def test_registry_lists_official_checkpoints():
    names = nss.available_models()
    for n in ["sam_vit_b", "sam_vit_l", "sam_vit_h", "sam2.1_hiera_tiny", "sam2.1_hiera_small",
              "sam2.1_hiera_base_plus", "sam2.1_hiera_large"]:
        assert n in names
    spec = model_spec("sam_vit_b")
    assert spec.url == "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth"
    assert spec.sha256 == "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912"
    assert all(len(model_spec(n).sha256) == 64 for n in ["sam_vit_b", "sam_vit_l", "sam_vit_h", "sam2.1_hiera_tiny"])
    assert model_spec("sam2.1_hiera_large").config == "configs/sam2.1/sam2.1_hiera_l.yaml"


def test_unknown_name_lists_valid_ones():
    with pytest.raises(UnknownModelError) as e:
        nss.load_model("sam3_giant")
    msg = str(e.value)
    assert "sam3_giant" in msg and "sam2.1_hiera_tiny" in msg and "sam_vit_b" in msg and "checkpoint=" in msg


def test_sam2_checkpoint_loads_bit_identically(sam2_files):
    ckpt, config = sam2_files
    m = nss.load_model(checkpoint=ckpt, config=config, device="cpu")
    assert m.family == "sam2" and str(m.device) == "cpu" and m.image_size == 256
    _same_weights(m.module, torch.load(ckpt, weights_only=True)["model"])
    # the video predictor class, with the official post-processing switched on
    from sam2.sam2_video_predictor import SAM2VideoPredictor

    assert isinstance(m.module, SAM2VideoPredictor) and m.module.binarize_mask_from_pts_for_mem_enc
    # hole filling (8 px) needs sam2._C; without it the official predictor skips it too
    assert m.module.fill_hole_area in (0, 8)
    assert m.identity.startswith("sha256:" + file_sha256_cached(Path(ckpt)) + "|config:")


def test_identity_follows_weights_and_config(sam2_files, sam1_file):
    ckpt, config = sam2_files
    a = nss.load_model(checkpoint=ckpt, config=config).identity
    assert nss.load_model(checkpoint=ckpt, config=config).identity == a  # stable
    # same weights, a config change that alters encoder outputs: another model for the cache
    b = nss.load_model(checkpoint=ckpt, config=config, overrides=["++model.image_encoder.scalp=0"]).identity
    assert b != a and b.split("|")[0] == a.split("|")[0]
    assert nss.load_model(checkpoint=sam1_file).identity.startswith("sha256:")


def test_sam1_checkpoint_loads_bit_identically(sam1_file):
    m = nss.load_model(checkpoint=sam1_file, model_type="auto", device="cpu")
    assert m.family == "sam" and m.image_size == 1024
    _same_weights(m.module, torch.load(sam1_file, weights_only=True))


def test_sam1_family_inferred_without_model_type(sam1_file):
    assert nss.load_model(checkpoint=sam1_file).family == "sam"


def test_micro_sam_style_wrapped_checkpoint(sam1_file, tmp_path):
    sd = torch.load(sam1_file, weights_only=True)
    wrapped = {"model_state": {f"sam.{k}": v for k, v in sd.items()}, "epoch": 12, "model_type": "vit_t_lm"}
    p = tmp_path / "finetuned.pt"
    torch.save(wrapped, p)
    m = nss.load_model(checkpoint=p, model_type="auto")
    _same_weights(m.module, sd)


def test_wrong_model_type_is_named(sam1_file):
    with pytest.raises(CheckpointError, match="does not match model_type='vit_b'"):
        nss.load_model(checkpoint=sam1_file, model_type="vit_b")
    with pytest.raises(CheckpointError, match="Unknown SAM 1 model_type"):
        nss.load_model(checkpoint=sam1_file, model_type="vit_q")


def test_wrong_family(sam1_file, sam2_files):
    with pytest.raises(CheckpointError, match="SAM 2 checkpoint"):
        nss.load_model(checkpoint=sam2_files[0], model_type="vit_b")
    with pytest.raises(CheckpointError, match="SAM 1 checkpoint"):
        nss.load_model(checkpoint=sam1_file, config=sam2_files[1])


def test_wrong_config_is_rejected(sam2_files):
    with pytest.raises(CheckpointError, match="does not fit"):
        nss.load_model(checkpoint=sam2_files[0], config="configs/sam2.1/sam2.1_hiera_t.yaml")
    with pytest.raises(CheckpointError, match="not found"):
        nss.load_model(checkpoint=sam2_files[0], config="configs/sam9/nothing.yaml")


def test_sam2_official_config_is_inferred(tmp_path):
    from sam2.build_sam import build_sam2

    torch.manual_seed(0)
    model = build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", None, device="cpu")
    p = tmp_path / "hiera_t_random.pt"
    torch.save({"model": model.state_dict()}, p)
    m = nss.load_model(checkpoint=p)
    assert m.family == "sam2" and m.extra["config"] == "configs/sam2.1/sam2.1_hiera_t.yaml"
    _same_weights(m.module, model.state_dict())


def test_truncated_and_corrupt_files(sam2_files, tmp_path):
    data = Path(sam2_files[0]).read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        nss.load_model(checkpoint=cut, config=sam2_files[1])
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all" * 100)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        nss.load_model(checkpoint=junk)
    with pytest.raises(CheckpointError, match="not found"):
        nss.load_model(checkpoint=tmp_path / "missing.pt")
    other = tmp_path / "other.pt"
    torch.save({"weights": [1, 2, 3]}, other)
    with pytest.raises(CheckpointError, match="state dict"):
        nss.load_model(checkpoint=other)


def test_pickled_objects_are_refused(tmp_path):
    p = tmp_path / "pickled.pt"
    torch.save({"model": {"a": torch.zeros(1)}, "cfg": Path("x")}, p)
    with pytest.raises(CheckpointError, match="weights_only|pickled"):
        nss.load_model(checkpoint=p)


def test_local_hash_mismatch(sam1_file):
    with pytest.raises(HashMismatchError, match="expected"):
        nss.load_model(checkpoint=sam1_file, sha256="0" * 64)
    m = nss.load_model(checkpoint=sam1_file, sha256=file_sha256_cached(Path(sam1_file)))
    assert m.family == "sam"


def test_load_module(sam2_model, sam1_model):
    m2 = nss.load_model(sam2_model.module)
    assert m2.family == "sam2" and m2.module is sam2_model.module and m2.identity.startswith("module:")
    assert nss.load_model(sam1_model.module).family == "sam"
    with pytest.raises(CheckpointError, match="Sam or a sam2 SAM2Base"):
        nss.load_model(torch.nn.Linear(2, 2))


def test_devices():
    assert str(nss.load_model.__globals__["resolve_device"](None)) in ("cpu", "cuda", "mps")
    resolve = nss.load_model.__globals__["resolve_device"]
    assert str(resolve("cpu")) == "cpu"
    with pytest.raises(DeviceError):
        resolve("tpu")
    with pytest.raises(DeviceError):
        resolve("not a device")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="CUDA is not available"):
            resolve("cuda")


# ------------------------------------------------------------------ download through a local server


@pytest.fixture
def file_server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


@pytest.fixture
def registered():
    from napari_sam_stack import models

    added = []

    def add(spec):
        models.register_model(spec)
        added.append(spec.name)

    yield add
    for n in added:
        models._REGISTRY.pop(n, None)


def test_download_verifies_hash_and_caches(sam1_file, file_server, registered, tmp_path):
    root, url = file_server
    (root / "tiny.pth").write_bytes(Path(sam1_file).read_bytes())
    digest = file_sha256_cached(Path(sam1_file))
    registered(ModelSpec("test_tiny", "sam", url + "tiny.pth", digest, Path(sam1_file).stat().st_size,
                         model_type="auto"))
    m = nss.load_model("test_tiny", progress=False)
    assert m.family == "sam" and m.name == "test_tiny"
    cached = Path(nss.models.weights_dir()) / "tiny.pth"
    assert cached.is_file()
    (root / "tiny.pth").unlink()  # second load must not need the server
    assert nss.load_model("test_tiny", progress=False).identity == m.identity


def test_download_hash_mismatch_is_rejected(sam1_file, file_server, registered):
    root, url = file_server
    (root / "tiny.pth").write_bytes(Path(sam1_file).read_bytes())
    registered(ModelSpec("test_badhash", "sam", url + "tiny.pth", "1" * 64, model_type="auto"))
    with pytest.raises(HashMismatchError, match="expected SHA-256"):
        nss.load_model("test_badhash", progress=False)
    assert not (Path(nss.models.weights_dir()) / "tiny.pth").exists()


def test_offline_error_names_url_path_and_checkpoint_option(registered):
    registered(ModelSpec("test_offline", "sam2", "http://127.0.0.1:9/nothing/sam2_x.pt", None,
                         config="configs/sam2.1/sam2.1_hiera_t.yaml"))
    with pytest.raises(DownloadError) as e:
        nss.load_model("test_offline", progress=False)
    msg = str(e.value)
    assert "http://127.0.0.1:9/nothing/sam2_x.pt" in msg
    assert str(Path(nss.models.weights_dir()) / "sam2_x.pt") in msg
    assert "checkpoint=" in msg and "config=" in msg
