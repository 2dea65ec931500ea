"""Finetuning: the loss goes down, checkpoints load through load_model and are written atomically,
runs resume and cancel, the shipped nuclei model matches its registry entry, the CLI and the
quality benchmark run. Tiny random-weight models, no thresholds on their quality; the shipped model
must segment held-out nuclei (a floor well below its measured Dice, docs/benchmarks.md)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_sam_stack import load_model
from napari_sam_stack.finetune import Trainer, TrainingData, TrainingError
from napari_sam_stack.testing import load_tiny_sam1, load_tiny_sam2, synthetic_nuclei

ROOT = Path(__file__).resolve().parents[1]
MIN_SHIPPED_DICE = 0.5  # held-out median 0.79 (docs/benchmarks.md); set well below so a re-trained model passes


@pytest.fixture(scope="module")
def data():
    image, labels = synthetic_nuclei(shape=(6, 64, 80), n_nuclei=4, seed=3)
    return TrainingData([(image, labels)])


def _tiny(family, folder):
    return load_tiny_sam2(folder) if family == "sam2" else load_tiny_sam1(folder)


@pytest.mark.parametrize("family", ["sam2", "sam"])
def test_steps_lower_the_loss_on_a_fixed_batch(family, data, tmp_path):
    torch.manual_seed(0)
    trainer = Trainer(_tiny(family, tmp_path), data, lr=1e-3, steps=10, corrections=1, max_objects=3, seed=0)
    sample = trainer.draw()
    before = trainer.evaluate(sample, seed=5)
    for _ in range(4):
        trainer.step(sample)
    after = trainer.evaluate(sample, seed=5)
    assert np.isfinite(before) and after < before


@pytest.mark.parametrize("family", ["sam2", "sam"])
def test_checkpoint_loads_and_reproduces_the_trained_logits(family, data, tmp_path):
    from napari_sam_stack import Session

    model = _tiny(family, tmp_path)
    trainer = Trainer(model, data, lr=1e-3, steps=2, corrections=1, max_objects=2, trainable="all")
    out = tmp_path / "trained.pt"
    assert trainer.fit(out=out)
    if family == "sam2":
        assert torch.load(out, weights_only=True).keys() == {"model"}
        loaded = load_model(checkpoint=out, config=out.with_suffix(".yaml"), device="cpu")
    else:
        loaded = load_model(checkpoint=out, model_type="auto", device="cpu")
    image, _ = synthetic_nuclei(shape=(2, 64, 80), n_nuclei=2, seed=4)
    ours = load_model(trainer.module, device="cpu")
    kw = dict(points=[[30, 40]], point_labels=[1], multimask=True)
    a = Session(image, loaded, in_memory=True).predict(1, **kw)
    b = Session(image, ours, in_memory=True).predict(1, **kw)
    c = Session(image, model, in_memory=True).predict(1, **kw)
    np.testing.assert_allclose(a.logits, b.logits, atol=1e-4)
    assert np.abs(a.logits - c.logits).max() > 1e-3  # training changed the model, the original is untouched


@pytest.mark.parametrize("trainable", ["decoder", "decoder+memory", "lora"])
def test_trainable_parts_and_lora_export(trainable, data, tmp_path):
    model = load_tiny_sam2(tmp_path)
    trainer = Trainer(model, data, lr=1e-2, steps=3, corrections=1, max_objects=2, trainable=trainable,
                      p_sequence=0.5, sequence=(2, 3))
    names = {n for n, p in trainer.module.named_parameters() if p.requires_grad}
    encoder = {n for n in names if n.startswith("image_encoder.")}
    if trainable == "decoder":
        assert names and all(n.startswith(("sam_mask_decoder.", "sam_prompt_encoder.")) for n in names)
    else:
        assert any(n.startswith("memory_attention.") for n in names)
        assert any(n.startswith("memory_encoder.") for n in names)
    assert (encoder and all(".lora_" in n for n in encoder)) if trainable == "lora" else not encoder
    before = {k: v.clone() for k, v in trainer.module.state_dict().items()}
    trainer.fit(out=tmp_path / "m.pt")
    after = trainer.module.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= names
    loaded = load_model(checkpoint=tmp_path / "m.pt", config=tmp_path / "m.yaml", device="cpu")  # official names
    if trainable == "lora":
        qkv = "image_encoder.trunk.blocks.0.attn.qkv"
        merged = trainer.module.image_encoder.trunk.blocks[0].attn.qkv.weight.detach()
        assert not torch.equal(merged, before[qkv + ".parametrizations.weight.original"])
        torch.testing.assert_close(loaded.module.state_dict()[qkv + ".weight"], merged)


def test_bad_options_are_training_errors(data, tmp_path):
    sam1 = load_tiny_sam1(tmp_path)
    with pytest.raises(TrainingError, match="memory"):
        Trainer(sam1, data, trainable="decoder+memory")
    with pytest.raises(TrainingError, match="trainable"):
        Trainer(sam1, data, trainable="everything")
    with pytest.raises(TrainingError, match="unknown"):
        Trainer(sam1, data, learning_rate=1)
    image, labels = synthetic_nuclei(shape=(2, 32, 32), n_nuclei=1, seed=0)
    with pytest.raises(TrainingError, match="no labelled"):
        TrainingData([(image, np.zeros_like(labels))])
    from napari_sam_stack.errors import ImageError

    with pytest.raises(ImageError, match="do not fit"):
        TrainingData([(image, labels[:, :16])])


def test_one_prompted_slice_leaves_the_rest_of_a_sequence_to_memory(data, tmp_path):
    """prompted_slices=1: SAM 2's training forward prompts and corrects only a sequence's first slice
    (sam2.1's default, 2, prompts or corrects a second slice in some sequences)."""
    model = load_tiny_sam2(tmp_path)
    seen = {}
    for prompted in (1, 2):
        tr = Trainer(model, data, steps=12, p_sequence=1.0, sequence=(4, 4), max_objects=2, crop=(32, 64),
                     prompted_slices=prompted, seed=1)
        real, calls = tr.view.prepare_prompt_inputs, []

        def spy(backbone_out, inp, start_frame_idx=0, real=real, calls=calls):
            out = real(backbone_out, inp, start_frame_idx=start_frame_idx)
            calls.append((list(out["init_cond_frames"]), list(out["frames_to_add_correction_pt"])))
            return out

        tr.view.prepare_prompt_inputs = spy
        for _ in range(12):
            tr.step()
        seen[prompted] = calls
    assert all(cond == [0] and corrected in ([0], []) for cond, corrected in seen[1])  # ([] : a mask prompt)
    assert any(len(cond) > 1 or len(corrected) > 1 for cond, corrected in seen[2])
    with pytest.raises(TrainingError, match="prompted_slices"):
        Trainer(model, data, prompted_slices=0)


def test_resume_continues_the_run_and_cancel_keeps_the_last_save(data, tmp_path):
    model = load_tiny_sam2(tmp_path)
    out, state = tmp_path / "m.pt", tmp_path / "m.pt.state"
    opts = dict(lr=1e-3, steps=3, corrections=1, max_objects=2, seed=1)
    full = Trainer(model, data, **opts)
    assert full.fit()
    first = Trainer(model, data, **opts)
    assert not first.fit(cancel=lambda: first.step_count >= 2, out=out, state=state, save_every=2)
    saved, saved_state = out.read_bytes(), state.read_bytes()
    again = Trainer.resume(state, model, data)
    assert again.step_count == 2
    assert not again.fit(cancel=lambda: True, out=out, state=state)  # cancelled before its next save
    assert out.read_bytes() == saved and state.read_bytes() == saved_state
    resumed = Trainer.resume(state, model, data)
    assert resumed.fit(out=out, state=state)
    assert resumed.step_count == 3 and len(resumed.losses) == 3
    np.testing.assert_allclose(resumed.losses, full.losses, rtol=1e-4)
    for k, v in full.module.state_dict().items():
        torch.testing.assert_close(resumed.module.state_dict()[k], v, rtol=1e-4, atol=1e-5)
    with pytest.raises(TrainingError, match="not a napari-sam-stack training state"):
        Trainer.resume(out, model, data)


def test_a_failed_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    from napari_sam_stack.finetune import checkpoint as ck

    target = tmp_path / "m.pt"
    ck.save_atomic({"w": torch.ones(3)}, target)
    before = target.read_bytes()

    def broken(obj, f, *a, **k):
        f.write(b"partial")
        raise KeyboardInterrupt  # killed half-way

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(KeyboardInterrupt):
        ck.save_atomic({"w": torch.zeros(3)}, target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temp file left behind


def test_shipped_model_matches_registry_and_loads_offline(monkeypatch):
    from napari_sam_stack import models
    from napari_sam_stack._checkpoints import file_sha256

    spec = models.model_spec("nss_nuclei_micro")
    path = models._DATA / spec.bundled
    assert file_sha256(path) == spec.sha256 and path.stat().st_size == spec.size
    assert spec.size <= 20 * 2**20

    def no_network(*a, **k):
        raise AssertionError("the bundled model must not be downloaded")

    import pooch

    monkeypatch.setattr(pooch, "retrieve", no_network)
    m = load_model("nss_nuclei_micro", device="cpu")
    assert m.family == "sam2" and m.image_size == 256 and m.name == "nss_nuclei_micro"


def test_shipped_model_segments_held_out_nuclei():
    """One click on each of the 12 largest nuclei of a held-out tile (img2d columns >= 256, never trained on):
    the masks must overlap their nuclei (the random-weight floor is ~0.04) and follow the click."""
    import tifffile

    from napari_sam_stack import Session, models

    image = tifffile.imread(models._DATA / "img2d.tif")[:256, 256:512]
    labels = tifffile.imread(models._DATA / "mask2d.tif")[:256, 256:512]
    s = Session(image, load_model("nss_nuclei_micro", device="cpu"), axis=None, in_memory=True)
    ids, areas = np.unique(labels[labels > 0], return_counts=True)
    scores, masks = [], []
    for i in ids[np.argsort(areas)[::-1][:12]]:
        gt = labels == i
        pts = np.argwhere(gt)
        click = pts[np.argmin(((pts - pts.mean(0)) ** 2).sum(1))]  # the nucleus pixel nearest its centroid
        r = s.predict(0, points=[click.tolist()], point_labels=[1])
        m = r.masks[r.best]
        masks.append(m)
        scores.append(2 * np.logical_and(m, gt).sum() / (m.sum() + gt.sum()))
    assert np.median(scores) >= MIN_SHIPPED_DICE, scores
    assert not np.array_equal(masks[0], masks[1])  # a different click gives a different nucleus


def test_cli_train_writes_a_loadable_checkpoint(tmp_path):
    import argparse

    import tifffile

    from napari_sam_stack.finetune import add_cli
    from napari_sam_stack.testing import tiny_sam2_checkpoint

    image, labels = synthetic_nuclei(shape=(4, 48, 48), n_nuclei=2, seed=2)
    tifffile.imwrite(tmp_path / "img.tif", image)
    tifffile.imwrite(tmp_path / "lab.tif", labels)
    ckpt, config = tiny_sam2_checkpoint(tmp_path)
    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers())
    out = tmp_path / "out.pt"
    argv = ["train", str(tmp_path / "img.tif"), "--labels", str(tmp_path / "lab.tif"), "--out", str(out),
            "--checkpoint", str(ckpt), "--config", str(config), "--steps", "2", "--device", "cpu"]
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    load_model(checkpoint=out, config=out.with_suffix(".yaml"), device="cpu")
    saved = out.read_bytes()
    args = parser.parse_args(argv)
    assert args.func(args) == 2  # exists: refused without --overwrite, file untouched
    assert out.read_bytes() == saved


def test_cli_train_refuses_bad_numbers_first_and_asks_about_an_image_given_as_labels(tmp_path, capsys):
    import argparse

    import tifffile

    from napari_sam_stack.finetune import add_cli

    image = np.random.default_rng(0).integers(0, 4000, (4, 48, 48), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "img.tif", image)  # no axes named: train says nothing about axes it does not use
    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers())
    base = ["train", str(tmp_path / "img.tif"), "--labels", str(tmp_path / "img.tif"), "--out", str(tmp_path / "o.pt"),
            "--checkpoint", str(tmp_path / "never-read.pt"), "--device", "cpu"]
    for flags, says in ((["--steps", "0"], "--steps 0 must be 1 or more"), (["--lr", "0"], "--lr 0.0 must be more than 0"),
                        (["--save-every", "-1"], "--save-every -1 must be 0 or more")):
        args = parser.parse_args(base + flags)
        assert args.func(args) == 2
        assert says in capsys.readouterr().err
    args = parser.parse_args(base + ["--steps", "1"])  # the image as its own labels: asked about, then it fails
    with pytest.warns(UserWarning, match="is it an image rather than instance labels"):
        assert args.func(args) == 2
    err = capsys.readouterr().err
    assert "axes" not in err and "never-read.pt" in err and not (tmp_path / "o.pt").exists()


def test_quality_benchmark_runs_on_a_subset():
    spec = importlib.util.spec_from_file_location("eval_quality", ROOT / "benchmarks" / "eval_quality.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--subset", "1", "--no-write", "--points-per-side", "4"]) == 0


def test_training_script_runs_both_phases(tmp_path):
    """scripts/train_nuclei.py end to end for a few steps: phase 1 (images), phase 2 (video), a loadable result."""
    spec = importlib.util.spec_from_file_location("train_nuclei", ROOT / "scripts" / "train_nuclei.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "micro.pt"
    assert mod.main(["--steps", "2", "--video-steps", "2", "--out", str(out), "--save-every", "0"]) == 0
    assert (tmp_path / "micro.pt.state.images.pt").exists() and (tmp_path / "micro.pt.state.video").exists()
    model = load_model(checkpoint=out, config=out.with_suffix(".yaml"), device="cpu")
    assert model.family == "sam2"


def _script():
    spec = importlib.util.spec_from_file_location("train_nuclei", ROOT / "scripts" / "train_nuclei.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_time_budget_shortens_both_phases_to_fit():
    """On a machine too slow for the recipe the projection (phase 1's s/step, phase 2 at 2.5x) is cut to fit."""
    import time
    from types import SimpleNamespace

    mod = _script()
    now = time.perf_counter()
    budget = mod.Budget(now - 100, minutes=60, video_steps=600)  # 100 s spent, 100 steps done: 1 s/step
    trainer = SimpleNamespace(options={"steps": 5400}, step_count=100)
    budget.check("images", trainer, 0, now - 100)
    left = 3600 - 100 - mod.Budget.MARGIN_S
    planned = (trainer.options["steps"] - 100) + budget.video_steps * mod.Budget.PHASE2_COST
    assert trainer.options["steps"] < 5400 and budget.video_steps < 600
    assert 0.95 * left <= planned <= left + 1  # what is left of the budget, used
    fast = SimpleNamespace(options={"steps": 5400}, step_count=100)
    mod.Budget(now - 10, minutes=60, video_steps=600).check("images", fast, 0, now - 10)  # 0.1 s/step: fits
    assert fast.options["steps"] == 5400


def test_training_script_keeps_to_its_time_budget(tmp_path, monkeypatch, capsys):
    """A budget already spent: both phases stop early and still write a loadable checkpoint."""
    mod = _script()
    monkeypatch.setattr(mod.Budget, "AFTER", 2)
    monkeypatch.setattr(mod.Budget, "EVERY", 1)
    out = tmp_path / "micro.pt"
    assert mod.main(["--steps", "8", "--video-steps", "4", "--minutes", "0.01", "--out", str(out),
                     "--save-every", "0"]) == 0
    said = capsys.readouterr().out
    assert "images shortened to 2 steps, video to 1" in said and "images: 2 steps" in said
    assert "video: 1 steps" in said
    model = load_model(checkpoint=out, config=out.with_suffix(".yaml"), device="cpu")
    assert model.family == "sam2"
