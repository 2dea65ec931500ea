"""Hostile and careless input (issue 10): every bad argument gives OUR exception type with a
message that says what is wrong, before any work, and no file — a user's folder, a
checkpoint, a cache — changes. Then one regression test per numbered finding of issue 10
(exact reproductions), the CLI's own findings (3, and 8's CLI parts) being tested with the CLI.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from _readonly import read_only
from omegaconf import OmegaConf

import napari_sam_stack as nss
from napari_sam_stack._cache import MARKER
from napari_sam_stack.embeddings import CorruptCacheWarning, EmbeddingStore
from napari_sam_stack.errors import CacheError, CheckpointError, ImageError, PromptError, SamStackError
from napari_sam_stack.normalise import Frames

STACK = np.random.default_rng(3).integers(0, 256, (4, 40, 52), dtype=np.uint8)


def snapshot(*roots) -> dict[str, str]:
    """Every file under ``roots`` (or the file itself) -> SHA-256 of its bytes."""
    out = {}
    for root in map(Path, roots):
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for p in files:
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture
def user_folder(tmp_path):
    """A user's project folder: raw data, notes, a zarr of their own."""
    root = tmp_path / "DIR"
    (root / "proj" / "raw").mkdir(parents=True)
    (root / "proj" / "raw" / "a.tif").write_bytes(b"II*\x00" + bytes(range(256)) * 8)
    (root / "notes").mkdir()
    (root / "notes" / "todo.txt").write_text("segment everything")
    (root / "mine.zarr").mkdir()
    (root / "mine.zarr" / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {}}')
    (root / ".tmp-scratch").mkdir()  # named like our debris, but not ours
    (root / ".tmp-scratch" / "keep.txt").write_text("keep")
    return root


class Payload:
    """Unpickling this creates ``path``: proof that code in a file ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


# ---------------------------------------------------------------- images (ImageError)

IMAGES = {
    "torch tensor": (lambda: torch.zeros(3, 8, 8), {}, "torch tensor"),
    "no slices": (lambda: np.zeros((0, 8, 8), np.uint8), {}, "empty"),
    "no rows": (lambda: np.zeros((3, 0, 8), np.uint8), {}, "empty"),
    "no columns": (lambda: np.zeros((3, 8, 0), np.uint8), {}, "empty"),
    "2D no columns": (lambda: np.zeros((8, 0), np.uint8), {"axis": None}, "empty"),
    "RGB with axis=0": (lambda: np.zeros((32, 24, 3), np.uint8), {}, "axis=None"),
    "RGBA with axis=0": (lambda: np.zeros((32, 24, 4), np.uint8), {}, "axis=None"),
    "fixed float": (lambda: np.zeros((3, 4, 8, 8), np.uint8), {"fixed": {1: 1.7}}, "must be an integer"),
    "fixed bool": (lambda: np.zeros((3, 4, 8, 8), np.uint8), {"fixed": {1: True}}, "must be an integer"),
    "fixed not a dict": (lambda: np.zeros((3, 4, 8, 8), np.uint8), {"fixed": "1"}, "fixed must be a dict"),
    "fixed out of range": (lambda: np.zeros((3, 4, 8, 8), np.uint8), {"fixed": {1: 4}}, "out of range"),
    "axis True": (lambda: np.zeros((3, 8, 8), np.uint8), {"axis": True}, "must be an integer"),
    "axis 1.0": (lambda: np.zeros((3, 8, 8), np.uint8), {"axis": 1.0}, "must be an integer"),
    "axis string": (lambda: np.zeros((3, 8, 8), np.uint8), {"axis": "0"}, "must be an integer"),
    "axis 3 of 3": (lambda: np.zeros((3, 8, 8), np.uint8), {"axis": 3}, "does not exist"),
    "channel_axis word": (lambda: np.zeros((3, 8, 8), np.uint8), {"channel_axis": "last"}, "channel_axis"),
    "contrast text": (lambda: np.zeros((3, 8, 8), np.uint16), {"contrast_limits": "abc"}, "contrast_limits"),
    "contrast 3 numbers": (lambda: np.zeros((3, 8, 8), np.uint16), {"contrast_limits": (1, 2, 3)}, "contrast_limits"),
    "contrast reversed": (lambda: np.zeros((3, 8, 8), np.uint16), {"contrast_limits": (5, 1)}, "low <= high"),
    "contrast inf": (lambda: np.zeros((3, 8, 8), np.uint16), {"contrast_limits": (0, np.inf)}, "finite"),
    "contrast None inside": (lambda: np.zeros((3, 8, 8), np.uint16), {"contrast_limits": (None, 3)}, "contrast_limits"),
    "contrast bools": (lambda: np.zeros((3, 8, 8), np.uint16), {"contrast_limits": (False, True)}, "contrast_limits"),
    "percentiles reversed": (lambda: np.zeros((3, 8, 8), np.uint16), {"percentiles": (99, 1)}, "percentiles"),
    "percentiles over 100": (lambda: np.zeros((3, 8, 8), np.uint16), {"percentiles": (0, 150)}, "percentiles"),
    "percentiles one number": (lambda: np.zeros((3, 8, 8), np.uint16), {"percentiles": 5}, "percentiles"),
    "channel True": (lambda: np.zeros((3, 8, 8, 2), np.uint16), {"channel": True}, "channel"),
    "channel letter": (lambda: np.zeros((3, 8, 8, 2), np.uint16), {"channel": "r"}, "channel"),
    "channel out of range": (lambda: np.zeros((3, 8, 8, 2), np.uint16), {"channel": 2}, "channel"),
    "None": (lambda: None, {}, "must be an array"),
    "a file name": (lambda: "stack.tif", {}, "must be an array"),
    "object dtype": (lambda: np.array([[[object()]]]), {}, "cannot make frames"),
    "text pixels": (lambda: np.full((2, 3, 3), "x"), {}, "cannot make frames"),
    "complex pixels": (lambda: np.zeros((2, 3, 3), complex), {}, "cannot make frames"),
    "ragged list": (lambda: [[[1, 2]], [[1]]], {}, "cannot be read as an array"),
}


@pytest.mark.parametrize("case", list(IMAGES))
def test_bad_images(case, sam2_model, tmp_path):
    make, kw, fragment = IMAGES[case]
    with pytest.raises(ImageError, match=fragment):
        Frames(make(), **{"axis": 0, **kw})
    with pytest.raises(ImageError, match=fragment):  # the same through the Session, before any work
        nss.Session(make(), sam2_model, **{"axis": 0, "cache_dir": tmp_path / "c", **kw})
    assert not (tmp_path / "c").exists()


# ---------------------------------------------------------------- prompts, ids, indices, flags (PromptError)


@pytest.fixture
def session(sam2_model):
    return nss.Session(STACK, sam2_model, axis=0, in_memory=True)


CALLS = {
    "id 2**70": (lambda s: s.add_prompt(2**70, 0, points=[[3, 3]]), "1..4294967295"),
    "id 2**32": (lambda s: s.add_prompt(2**32, 0, points=[[3, 3]]), "1..4294967295"),
    "id 0": (lambda s: s.add_prompt(0, 0, points=[[3, 3]]), "0 is background"),
    "id -1": (lambda s: s.add_prompt(-1, 0, points=[[3, 3]]), "1..4294967295"),
    "id True": (lambda s: s.add_prompt(True, 0, points=[[3, 3]]), "must be an integer"),
    "id '1'": (lambda s: s.add_prompt("1", 0, points=[[3, 3]]), "must be an integer"),
    "id 1.5": (lambda s: s.add_prompt(1.5, 0, points=[[3, 3]]), "must be an integer"),
    "id 1.0": (lambda s: s.add_prompt(1.0, 0, points=[[3, 3]]), "must be an integer"),
    "id None": (lambda s: s.add_prompt(None, 0, points=[[3, 3]]), "must be an integer"),
    "id numpy bool": (lambda s: s.add_prompt(np.bool_(True), 0, points=[[3, 3]]), "must be an integer"),
    "index True": (lambda s: s.add_prompt(1, True, points=[[3, 3]]), "must be an integer"),
    "index '1'": (lambda s: s.predict("1", points=[[3, 3]]), "must be an integer"),
    "index 1.5": (lambda s: s.predict(1.5, points=[[3, 3]]), "must be an integer"),
    "index 99": (lambda s: s.predict(99, points=[[3, 3]]), "out of range"),
    "index -1": (lambda s: s.predict(-1, points=[[3, 3]]), "out of range"),
    "multimask 'no'": (lambda s: s.predict(0, points=[[3, 3]], multimask="no"), "multimask"),
    "multimask 1": (lambda s: s.predict(0, points=[[3, 3]], multimask=1), "multimask"),
    "points text": (lambda s: s.predict(0, points="3,3"), "must be numbers"),
    "points of text": (lambda s: s.predict(0, points=[["a", "b"]]), "must be numbers"),
    "points bools": (lambda s: s.predict(0, points=[[True, False]]), "must be numbers"),
    "points inf": (lambda s: s.predict(0, points=[[np.inf, 2]]), "infinite"),
    "points nan": (lambda s: s.predict(0, points=[[np.nan, 2]]), "NaN"),
    "points huge": (lambda s: s.predict(0, points=[[1e300, 2]]), "outside the slice"),
    "points negative": (lambda s: s.predict(0, points=[[-3, 2]]), "outside the slice"),
    "points 4 columns": (lambda s: s.predict(0, points=[[1, 2, 3, 4]]), "points must be"),
    "points other slice": (lambda s: s.predict(0, points=[[2, 3, 3]]), "not on slice 0"),
    "labels text": (lambda s: s.predict(0, points=[[3, 3]], point_labels=["x"]), "point_labels"),
    "labels 2": (lambda s: s.predict(0, points=[[3, 3]], point_labels=[2]), "point_labels"),
    "labels too many": (lambda s: s.predict(0, points=[[3, 3]], point_labels=[1, 0]), "point_labels"),
    "labels alone": (lambda s: s.predict(0, point_labels=[1]), "without points"),
    "box reversed": (lambda s: s.predict(0, box=(5, 5, 1, 1)), "negative extent"),
    "box text": (lambda s: s.predict(0, box="abc"), "must be numbers"),
    "box 3 numbers": (lambda s: s.predict(0, box=[1, 2, 3]), "box must be"),
    "box outside": (lambda s: s.predict(0, box=[0, 0, 500, 500]), "outside the slice"),
    "mask empty": (lambda s: s.predict(0, mask=np.zeros((40, 52), bool)), "empty"),
    "mask wrong shape": (lambda s: s.predict(0, mask=np.ones((7, 7), bool)), "mask must be"),
    "mask logits nan": (lambda s: s.predict(0, mask=np.full((64, 64), np.nan, np.float32)), "NaN"),
    "nothing": (lambda s: s.predict(0), "empty prompt"),
    "remove id True": (lambda s: s.remove_prompt(True), "must be an integer"),
    "propagate ids True": (lambda s: s.iter_propagate(obj_ids=[True]), "must be an integer"),
    "propagate start True": (lambda s: (s.add_prompt(1, 0, points=[[3, 3]]), s.iter_propagate(start=True)),
                             "must be an integer"),
}


@pytest.mark.parametrize("case", list(CALLS))
def test_bad_prompt_arguments(case, session):
    call, fragment = CALLS[case]
    with pytest.raises(PromptError, match=fragment):
        call(session)
    assert session.embeddings.encoded_slices == 0  # refused before any work
    assert all(o == 1 for o in session.prompts)  # nothing stored under a bad id


def test_numpy_integers_are_ids_and_indices(session):
    session.add_prompt(np.int64(7), np.int32(1), points=[[3, 3]])
    session.add_prompt(np.uint32(2**32 - 1), np.array(2), points=[[3, 3]])
    assert sorted(session.prompts) == [7, 2**32 - 1] and sorted(session.prompts[7]) == [1]
    assert all(type(o) is int for o in session.prompts)


# ---------------------------------------------------------------- the cache (CacheError)


CACHE = {
    "clear ''": (lambda d, m: nss.clear_cache(""), "names no folder"),
    "clear blanks": (lambda d, m: nss.clear_cache("   "), "names no folder"),
    "info ''": (lambda d, m: nss.cache_info(""), "names no folder"),
    "clear a file": (lambda d, m: nss.clear_cache(d / "proj" / "raw" / "a.tif"), "is a file"),
    "info a file": (lambda d, m: nss.cache_info(d / "notes" / "todo.txt"), "is a file"),
    "clear a number": (lambda d, m: nss.clear_cache(123), "folder path"),
    "age negative": (lambda d, m: nss.clear_cache(d, older_than_days=-1), "older_than_days"),
    "age text": (lambda d, m: nss.clear_cache(d, older_than_days="7"), "older_than_days"),
    "age True": (lambda d, m: nss.clear_cache(d, older_than_days=True), "older_than_days"),
    "age nan": (lambda d, m: nss.clear_cache(d, older_than_days=float("nan")), "older_than_days"),
    "store ''": (lambda d, m: EmbeddingStore(Frames(STACK, 0), m, cache_dir=""), "names no folder"),
    "session ''": (lambda d, m: nss.Session(STACK, m, cache_dir=""), "names no folder"),
    "store bytes dir": (lambda d, m: EmbeddingStore(Frames(STACK, 0), m, cache_dir=b"/tmp"), "folder path"),
    "storage int8": (lambda d, m: EmbeddingStore(Frames(STACK, 0), m, cache_dir=d, dtype="int8"), "dtype"),
    "lru True": (lambda d, m: EmbeddingStore(Frames(STACK, 0), m, cache_dir=d, lru_slices=True), "lru_slices"),
    "lru text": (lambda d, m: EmbeddingStore(Frames(STACK, 0), m, cache_dir=d, lru_slices="4"), "lru_slices"),
    "in_memory 'yes'": (lambda d, m: EmbeddingStore(Frames(STACK, 0), m, in_memory="yes"), "in_memory"),
}

@pytest.mark.parametrize("case", list(CACHE))
def test_bad_cache_arguments(case, sam2_model, user_folder, tmp_path, monkeypatch):
    monkeypatch.chdir(user_folder)  # "" must never mean the working directory
    before = snapshot(user_folder)
    call, fragment = CACHE[case]
    with pytest.raises(CacheError, match=fragment):
        call(user_folder, sam2_model)
    assert snapshot(user_folder) == before


# ---------------------------------------------------------------- models: checkpoints and configs (CheckpointError)


@pytest.fixture
def evil(tmp_path, sam2_files):
    """Files a hostile user might hand us, and the file their code would create."""
    ckpt, config = sam2_files
    target = tmp_path / "PWNED"
    d = tmp_path / "evil"
    d.mkdir()
    torch.save({"model": torch.load(ckpt, weights_only=True)["model"], "x": Payload(target)}, d / "code.pt")
    with open(d / "legacy.pt", "wb") as f:
        pickle.dump(Payload(target), f)
    (d / "garbage.pt").write_bytes(os.urandom(2048))
    (d / "truncated.pt").write_bytes(Path(ckpt).read_bytes()[:4096])
    np.save(d / "obj.npy", np.array([Payload(target)], dtype=object), allow_pickle=True)
    (d / "bad.yaml").write_text("model: {_target_: [unclosed\n")
    (d / "binary.yaml").write_bytes(b"\x00\xff\xfe" * 50)
    (d / "list.yaml").write_text("- 1\n- 2\n")
    (d / "nomodel.yaml").write_text("trainer: {}\n")
    return {"dir": d, "target": target, "ckpt": ckpt, "config": config}


def _payload_config(evil, key: str, node) -> Path:
    cfg = OmegaConf.to_container(OmegaConf.load(evil["config"]))
    parts = key.split(".")
    at = cfg
    for p in parts[:-1]:
        at = at[p]
    at[parts[-1]] = node
    path = evil["dir"] / f"payload-{abs(hash((key, str(node))))}.yaml"
    OmegaConf.save(OmegaConf.create(cfg), path)
    return path


def _payloads(evil):
    t = str(evil["target"])
    d = evil["dir"]
    return {
        "Path.touch at the top": ("model", {"_target_": "pathlib.Path.touch", "_args_": [{"_target_": "pathlib.Path",
                                                                                          "_args_": [t]}]},
                                  "model._args_[0]._target_"),  # (model._target_ is ours: SAM2VideoPredictor)
        "builtins.open nested": ("model.image_encoder.trunk", {"_target_": "builtins.open", "_args_": [t, "w"]},
                                 "model.image_encoder.trunk._target_"),
        "torch.load weights_only false": ("model.image_encoder", {"_target_": "torch.load", "f": str(d / "legacy.pt"),
                                                                  "weights_only": False},
                                          "model.image_encoder._target_"),
        "numpy.load allow_pickle": ("model.memory_encoder", {"_target_": "numpy.load", "file": str(d / "obj.npy"),
                                                             "allow_pickle": True}, "model.memory_encoder._target_"),
        "os.system partial": ("model.memory_attention.layer", {"_target_": "os.system", "_partial_": True,
                                                               "_args_": [f"touch {t}"]},
                              "model.memory_attention.layer._target_"),
        "os.system inside _args_": ("model.image_encoder.neck._args_", [{"_target_": "os.system",
                                                                         "_args_": [f"touch {t}"]}],
                                    "model.image_encoder.neck._args_[0]._target_"),
        "through sam2's imports": ("model.image_encoder.trunk", {"_target_": "sam2.build_sam.os.system",
                                                                 "_args_": [f"touch {t}"]},
                                   "model.image_encoder.trunk._target_"),
        "a sam2 function": ("model.image_encoder.trunk", {"_target_": "sam2.build_sam.build_sam2",
                                                          "config_file": "x"}, "model.image_encoder.trunk._target_"),
        "target not a string": ("model.image_encoder.trunk", {"_target_": {"a": 1}},
                                "model.image_encoder.trunk._target_"),
    }


PAYLOADS = ["Path.touch at the top", "builtins.open nested", "torch.load weights_only false", "numpy.load allow_pickle",
            "os.system partial", "os.system inside _args_", "through sam2's imports", "a sam2 function",
            "target not a string"]


@pytest.mark.parametrize("case", PAYLOADS)
def test_config_payloads_are_never_instantiated(case, evil):
    """Finding 2: only sam2's model classes are instantiated; the key path is named; nothing ran."""
    key, node, named = _payloads(evil)[case]
    config = _payload_config(evil, key, node)
    before = snapshot(evil["dir"], evil["ckpt"])
    with pytest.raises(CheckpointError, match=r"not a sam2 model class") as err:
        nss.load_model(checkpoint=evil["ckpt"], config=config, device="cpu")
    assert named in str(err.value)
    assert not evil["target"].exists()
    assert snapshot(evil["dir"], evil["ckpt"]) == before


def test_config_payload_through_overrides_and_interpolation(evil):
    t = evil["target"]
    with pytest.raises(CheckpointError, match=r"model\.image_encoder\._target_ = 'os\.system'"):
        nss.load_model(checkpoint=evil["ckpt"], config=evil["config"], device="cpu",
                       overrides=["++model.image_encoder._target_=os.system", f"++model.image_encoder._args_=[touch {t}]"])
    cfg = OmegaConf.load(evil["config"])
    cfg.payload = "builtins.exec"
    cfg.model.image_encoder._target_ = "${payload}"
    OmegaConf.save(cfg, evil["dir"] / "interp.yaml")
    with pytest.raises(CheckpointError, match=r"model\.image_encoder\._target_ = 'builtins\.exec'"):
        nss.load_model(checkpoint=evil["ckpt"], config=evil["dir"] / "interp.yaml", device="cpu")
    assert not t.exists()


def test_every_shipped_sam2_config_passes_the_allow_list():
    from omegaconf import OmegaConf as OC

    import sam2
    from napari_sam_stack import _checkpoints as ck

    root = Path(sam2.__file__).parent
    configs = sorted(p for p in (root / "configs").rglob("*.yaml") if "training" not in str(p))
    assert len(configs) >= 8
    for p in configs:
        cfg, _ = ck.sam2_config(p)
        ck.check_sam2_targets(cfg, p)  # raises if one of sam2's own configs were refused
        assert OC.select(cfg, "model._target_") == "sam2.sam2_video_predictor.SAM2VideoPredictor"
    # the training configs instantiate training code (checkpoint loaders, trainers): refused
    train = next((root / "configs").rglob("*training*/*.yaml"))
    with pytest.raises(CheckpointError, match="'model' section"):  # (its model sits under trainer:)
        ck.sam2_config(train)
    cfg = OmegaConf.load(train)
    cfg.model = cfg.trainer.model
    with pytest.raises(CheckpointError, match=r"model\._target_ = 'training\.model\.sam2\.SAM2Train'"):
        ck.check_sam2_targets(cfg, train)


MODELS = {
    "checkpoint ''": (lambda e: nss.load_model(checkpoint="", config=e["config"]), CheckpointError, "file path"),
    "checkpoint a folder": (lambda e: nss.load_model(checkpoint=e["dir"], config=e["config"]), CheckpointError,
                            "not found"),
    "checkpoint a number": (lambda e: nss.load_model(checkpoint=5), CheckpointError, "file path"),
    "checkpoint missing": (lambda e: nss.load_model(checkpoint=e["dir"] / "none.pt"), CheckpointError, "not found"),
    "garbage bytes": (lambda e: nss.load_model(checkpoint=e["dir"] / "garbage.pt"), CheckpointError, "corrupt"),
    "truncated zip": (lambda e: nss.load_model(checkpoint=e["dir"] / "truncated.pt"), CheckpointError, "corrupt"),
    "pickled code": (lambda e: nss.load_model(checkpoint=e["dir"] / "code.pt"), CheckpointError, "holds code"),
    "legacy pickle": (lambda e: nss.load_model(checkpoint=e["dir"] / "legacy.pt"), CheckpointError,
                      "plain Python pickle.*NOT loaded"),
    "config ''": (lambda e: nss.load_model(checkpoint=e["ckpt"], config=""), CheckpointError, "file path"),
    "config a folder": (lambda e: nss.load_model(checkpoint=e["ckpt"], config=e["dir"]), CheckpointError,
                        "not found"),
    "config malformed": (lambda e: nss.load_model(checkpoint=e["ckpt"], config=e["dir"] / "bad.yaml"), CheckpointError,
                         "cannot be used"),
    "config binary": (lambda e: nss.load_model(checkpoint=e["ckpt"], config=e["dir"] / "binary.yaml"),
                      CheckpointError, "cannot be used"),
    "config a list": (lambda e: nss.load_model(checkpoint=e["ckpt"], config=e["dir"] / "list.yaml"), CheckpointError,
                      "'model' section"),
    "config no model": (lambda e: nss.load_model(checkpoint=e["ckpt"], config=e["dir"] / "nomodel.yaml"),
                        CheckpointError, "'model' section"),
    "overrides a string": (lambda e: nss.load_model(checkpoint=e["ckpt"], config=e["config"], overrides="a=1"),
                           CheckpointError, "overrides"),
    "override garbage": (lambda e: nss.load_model(checkpoint=e["ckpt"], config=e["config"], overrides=["=="]),
                         CheckpointError, "cannot be used"),
    "sha256 short": (lambda e: nss.load_model(checkpoint=e["ckpt"], sha256="abc"), CheckpointError, "64 hexadecimal"),
    "model_type a number": (lambda e: nss.load_model(checkpoint=e["ckpt"], model_type=5), CheckpointError,
                            "model_type"),
    "config and model_type": (lambda e: nss.load_model(checkpoint=e["ckpt"], config=e["config"], model_type="vit_b"),
                              CheckpointError, "not both"),
    "nothing": (lambda e: nss.load_model(), CheckpointError, "needs a model name"),
    "an object": (lambda e: nss.load_model(object()), CheckpointError, "needs a registry name"),
    "unknown name": (lambda e: nss.load_model("sam3_giant"), KeyError, "Unknown model"),
    "register twice": (lambda e: nss.register_model(nss.models.model_spec("sam_vit_b")), CheckpointError,
                       "already registered"),
    "register a dict": (lambda e: nss.register_model({"name": "x"}), CheckpointError, "needs a ModelSpec"),
    "register a family": (lambda e: nss.register_model(nss.ModelSpec("x", "sam3", "https://x/x.pt", None)),
                          CheckpointError, "family"),
    "bad device": (lambda e: nss.load_model(checkpoint=e["ckpt"], config=e["config"], device="tpu"), ValueError,
                   "not supported|not a torch device"),
}


@pytest.mark.parametrize("case", list(MODELS))
def test_bad_model_arguments(case, evil):
    call, kind, fragment = MODELS[case]
    before = snapshot(evil["dir"], evil["ckpt"])
    with pytest.raises(kind, match=fragment) as err:
        call(evil)
    assert isinstance(err.value, SamStackError)
    assert not evil["target"].exists()
    assert snapshot(evil["dir"], evil["ckpt"]) == before


# ---------------------------------------------------------------- regression tests, one per finding of issue 10


def test_finding1_clear_cache_deletes_only_our_folders(sam2_model, user_folder, monkeypatch):
    store = EmbeddingStore(Frames(STACK, 0), sam2_model, cache_dir=user_folder)
    store.compute()
    legacy = user_folder / ("0" * 24)  # a format-2 cache (before the marker): recognised by its attributes
    legacy.mkdir()
    (legacy / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": '
                                      '{"signature": {"format": 2}, "levels": ["fpn_0"], "slices": 3}}')
    user_files = {k: v for k, v in snapshot(user_folder).items() if not k.startswith((str(store.path), str(legacy)))}
    info = nss.cache_info(user_folder)
    assert sorted(e.path for e in info.entries) == sorted([store.path, legacy])
    assert nss.clear_cache(user_folder, older_than_days=1) == 0  # both fresh
    assert store.path.exists() and legacy.exists()
    freed = nss.clear_cache(user_folder)
    assert freed > 0 and not store.path.exists() and not legacy.exists()
    assert snapshot(user_folder) == user_files  # proj/raw/a.tif, notes, mine.zarr, .tmp-scratch: all there
    monkeypatch.chdir(user_folder / "proj")
    with pytest.raises(CacheError, match="names no folder"):
        nss.clear_cache("")
    assert snapshot(user_folder) == user_files


def test_finding1_read_only_cache_frees_nothing_and_says_so(sam2_model, tmp_path, monkeypatch):
    store = EmbeddingStore(Frames(STACK, 0), sam2_model, cache_dir=tmp_path)
    store.compute()
    before = snapshot(tmp_path)
    read_only(monkeypatch, tmp_path)
    assert nss.clear_cache(tmp_path) == 0
    assert nss.clear_cache(tmp_path, older_than_days=0) == 0
    monkeypatch.undo()
    assert snapshot(tmp_path) == before and len(nss.cache_info(tmp_path).entries) == 1


def test_finding2_malformed_yaml(evil):
    with pytest.raises(CheckpointError, match="bad.yaml cannot be used"):
        nss.load_model(checkpoint=evil["ckpt"], config=evil["dir"] / "bad.yaml", device="cpu")


def test_finding4_ids_must_fit_uint32(session):
    with pytest.raises(PromptError, match="1..4294967295"):
        session.add_prompt(2**70, 0, points=[[3, 3]])
    assert session.prompts == {}
    with pytest.raises(PromptError, match="must be an integer"):
        session.add_prompt(1, True, points=[[3, 3]])
    for bad in ("1", 1.5):
        with pytest.raises(PromptError, match="must be an integer"):
            session.add_prompt(bad, 0, points=[[3, 3]])
    with pytest.raises(PromptError, match="multimask must be True, False or None"):
        session.predict(0, points=[[3, 3]], multimask="no")


def test_finding4_validators_for_other_modules():
    from napari_sam_stack import _validate as v

    assert v.positive_or_none(None, "max_absent") is None and v.positive_or_none(np.int8(3), "max_absent") == 3
    for bad in (True, 0, -2, 1.5, "2"):
        with pytest.raises(PromptError, match="max_absent"):
            v.positive_or_none(bad, "max_absent")
    assert v.flag(np.bool_(False), "x") is False and v.object_id(np.uint64(2**32 - 1)) == 2**32 - 1


def _within(seconds, fn):
    """fn() in a thread; fails (instead of hanging the suite) when it does not return in time."""
    out = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - reported below
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still running after {seconds} s: a wait loop that makes no progress"
    if "error" in out:
        raise out["error"]
    return out["value"]


def test_finding5_read_only_cache_with_unreadable_metadata_does_not_hang(sam2_model, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    s = nss.Session(STACK, sam2_model, cache_dir=cache)
    s.compute_embeddings()
    before = snapshot(cache)
    expected = nss.Session(STACK, sam2_model, in_memory=True).predict(1, points=[[10, 12]]).logits
    read_only(monkeypatch, cache, unreadable=[s.embeddings.path / "zarr.json"])
    with pytest.warns(RuntimeWarning, match="keeping embeddings in memory"):
        again = nss.Session(STACK, sam2_model, cache_dir=cache)
    assert not again.embeddings.on_disk and "cannot be removed" in again.embeddings.fallback_reason
    r = _within(120, lambda: again.predict(1, points=[[10, 12]]))
    np.testing.assert_allclose(r.logits, expected, atol=1e-5)
    monkeypatch.undo()
    assert snapshot(cache) == before


def test_finding5_read_only_cache_with_a_damaged_chunk_falls_back_to_memory(sam2_model, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    store = EmbeddingStore(Frames(STACK, 0), sam2_model, cache_dir=cache)
    store.compute()
    chunk = next(p for p in (store.path / "fpn_1" / "c").rglob("*") if p.is_file() and p.parts[-4] == "2")
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0x5A
    chunk.write_bytes(bytes(raw))
    before = snapshot(cache)
    read_only(monkeypatch, cache)
    reader = EmbeddingStore(Frames(STACK, 0), sam2_model, cache_dir=cache)
    assert reader.on_disk  # readable: intact slices come from disk
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        e = _within(120, lambda: reader.get(2))
    kinds = [w.category for w in seen]
    assert CorruptCacheWarning in kinds and RuntimeWarning in kinds and not reader.on_disk
    fresh = EmbeddingStore(Frames(STACK, 0), sam2_model, in_memory=True).get(2)
    for a, b in zip(e.backbone_fpn, fresh.backbone_fpn):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    monkeypatch.undo()
    assert snapshot(cache) == before


def _pos_chunks(store):
    return [p for k in range(3) for p in (store.path / f"pos_{k}" / "c").rglob("*") if p.is_file()]


@pytest.mark.parametrize("damage", ["deleted", "flipped byte"])
def test_finding6_shared_encodings_are_verified_and_repaired(sam2_model, tmp_path, damage):
    store = EmbeddingStore(Frames(STACK, 0), sam2_model, cache_dir=tmp_path)
    store.compute()
    chunks = _pos_chunks(store)
    assert chunks
    for p in chunks:
        if damage == "deleted":
            p.unlink()
        else:
            raw = bytearray(p.read_bytes())
            raw[len(raw) // 2] ^= 0x01
            p.write_bytes(bytes(raw))
    fresh = EmbeddingStore(Frames(STACK, 0), sam2_model, in_memory=True).get(3)
    reader = EmbeddingStore(Frames(STACK, 0), sam2_model, cache_dir=tmp_path)
    with pytest.warns(CorruptCacheWarning, match="shared positional encodings are damaged") as seen:
        e = reader.get(3)
        reader.get(1)
    assert len([w for w in seen if "positional" in str(w.message)]) == 1  # one warning
    assert reader.encoded_slices == 1 and reader.on_disk  # recomputed by encoding one slice, repaired on disk
    for a, b in zip(e.vision_pos_enc, fresh.vision_pos_enc):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = EmbeddingStore(Frames(STACK, 0), sam2_model, cache_dir=tmp_path)
        g = again.get(0)
    assert again.encoder_calls == 0
    for a, b in zip(g.vision_pos_enc, fresh.vision_pos_enc):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_finding6_truncated_array_metadata_is_repaired_once(sam2_model, tmp_path):
    store = EmbeddingStore(Frames(STACK, 0), sam2_model, cache_dir=tmp_path)
    store.compute()
    meta = store.path / "fpn_0" / "zarr.json"
    meta.write_text(meta.read_text()[:40])
    with pytest.warns(CorruptCacheWarning, match="metadata cannot be read"):
        reader = EmbeddingStore(Frames(STACK, 0), sam2_model, cache_dir=tmp_path)
    reader.compute()
    assert reader.on_disk and reader.computed() == [0, 1, 2, 3]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning, no marker lost in a second session
        again = EmbeddingStore(Frames(STACK, 0), sam2_model, cache_dir=tmp_path)
        assert again.computed() == [0, 1, 2, 3]
        for i in range(4):
            again.get(i)
    assert again.encoder_calls == 0


def test_finding6_done_marker_that_is_a_directory(sam2_model, tmp_path):
    store = EmbeddingStore(Frames(STACK, 0), sam2_model, cache_dir=tmp_path)
    store.compute()
    marker = store.path / "done" / "2"
    marker.unlink()
    (marker / "junk").mkdir(parents=True)
    reader = EmbeddingStore(Frames(STACK, 0), sam2_model, cache_dir=tmp_path)
    assert reader.computed() == [0, 1, 3] and not reader.is_computed(2)
    reader.get(2)
    assert reader.encoded_slices == 1 and marker.is_file() and reader.computed() == [0, 1, 2, 3]


def test_finding6_cache_dir_that_is_a_file(sam2_model, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("mine")
    with pytest.warns(RuntimeWarning, match="is a file, not a folder"):
        s = nss.Session(STACK, sam2_model, cache_dir=blocker)
    assert not s.embeddings.on_disk and s.embeddings.computed() == []
    assert s.compute_embeddings() and s.embeddings.computed() == [0, 1, 2, 3]
    assert blocker.read_text() == "mine"


def test_finding7_images(sam2_model):
    with pytest.raises(ImageError, match="looks like ONE RGB picture.*axis=None"):
        nss.Session(np.zeros((32, 24, 3), np.uint8), sam2_model, in_memory=True)
    assert len(nss.Session(np.zeros((32, 24, 3), np.uint8), sam2_model, axis=None, in_memory=True)) == 1
    with pytest.raises(ImageError, match="torch tensor.*numpy"):
        nss.Session(torch.zeros(3, 8, 8), sam2_model, in_memory=True)
    with pytest.raises(ImageError, match="fixed index of axis 1 must be an integer, got 1.7"):
        Frames(np.zeros((3, 4, 8, 8), np.uint8), 0, fixed={1: 1.7})
    for shape in ((0, 8, 8), (3, 0, 8), (3, 8, 0)):
        with pytest.raises(ImageError, match="empty"):
            nss.Session(np.zeros(shape, np.uint8), sam2_model, in_memory=True)
    with pytest.raises(ImageError, match="contrast_limits must be numbers"):
        Frames(np.zeros((3, 8, 8), np.uint16), 0, contrast_limits=["low", "high"])


def test_finding8_messages(evil, session):
    with pytest.raises(CheckpointError) as err:
        nss.load_model(checkpoint=evil["dir"] / "code.pt")
    msg = str(err.value)
    assert "holds code (a reference to " in msg and "NOT loaded" in msg and "truncated" not in msg
    assert not evil["target"].exists()
    with pytest.raises(PromptError, match="points must be numbers"):
        session.predict(0, points=[["12", "x"]])


def test_finding1_symlinks_are_never_followed(sam2_model, user_folder, tmp_path):
    """A cache entry that is a link to a user's folder, or our folder holding a link to one: the
    link may go, what it points to stays."""
    cache = tmp_path / "cache"
    store = EmbeddingStore(Frames(STACK, 0), sam2_model, cache_dir=cache)
    store.get(0)
    (user_folder / MARKER).write_text("napari-sam-stack embeddings cache, format 3\n")  # a planted marker
    (cache / ("1" * 24)).symlink_to(user_folder, target_is_directory=True)
    (store.path / "link").symlink_to(user_folder / "proj", target_is_directory=True)
    before = snapshot(user_folder)
    assert [e.path for e in nss.cache_info(cache).entries] == [store.path]
    assert nss.clear_cache(cache) > 0 and not store.path.exists()
    assert snapshot(user_folder) == before and (cache / ("1" * 24)).is_symlink()
    store.path.symlink_to(user_folder / "mine.zarr", target_is_directory=True)  # our key links to a user's zarr
    with pytest.warns(RuntimeWarning, match="keeping embeddings in memory"):
        linked = EmbeddingStore(Frames(STACK, 0), sam2_model, cache_dir=cache)
        linked.get(1)
    assert not linked.on_disk and snapshot(user_folder) == before


def test_store_index_arguments_are_checked(sam2_model):
    store = EmbeddingStore(Frames(STACK, 0), sam2_model, in_memory=True)
    for bad in (True, "1", 1.5, None, 4, -5):
        with pytest.raises(ImageError, match="slice index|out of range"):
            store.get(bad)
        with pytest.raises(ImageError, match="slice index|out of range"):
            store.compute(indices=[bad])
    assert store.encoded_slices == 0
