"""The console script, run in-process through cli.main with real files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

import napari_sam_stack
from napari_sam_stack import Session, cli, load_model

DATA = Path(napari_sam_stack.__file__).parent / "data"  # real stardist nuclei, shipped with the package


def test_models_lists_registry(capsys):
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    assert "sam2.1_hiera_tiny" in out and "dl.fbaipublicfiles.com" in out and "weights cache" in out


def test_bad_input_is_a_message_not_a_traceback(tmp_path, capsys):
    tifffile.imwrite(tmp_path / "s.tif", np.zeros((2, 8, 8), np.uint8))
    assert cli.main(["embed", str(tmp_path / "s.tif"), "--model", "nope"]) == 2
    assert "Valid names" in capsys.readouterr().err
    assert cli.main(["embed", str(tmp_path / "missing.tif")]) == 2
    assert "missing.tif" in capsys.readouterr().err
    for bad in ("1,2", "1.5,2,3", "a,b,c"):
        with pytest.raises(SystemExit):
            cli.main(["segment", str(tmp_path / "s.tif"), "--point", bad, "--out", str(tmp_path / "o.tif")])
        err = capsys.readouterr().err
        assert "--point" in err and ("slice,row,col" in err or "whole number" in err)


@pytest.fixture
def common(sam2_files, tmp_path):
    ckpt, config = sam2_files
    return ["--checkpoint", str(ckpt), "--config", str(config), "--device", "cpu", "--cache-dir", str(tmp_path / "c")]


def test_embed_then_segment_from_seed_labels(sam2_files, common, tmp_path, capsys):
    """Annotate one slice of the real nuclei stack, propagate it headless, get those ids back."""
    image = tifffile.imread(DATA / "img3d.tif")[:10]
    truth = tifffile.imread(DATA / "mask3d.tif")[:10].astype(np.uint16)
    z = 5
    ids, sizes = np.unique(truth[z], return_counts=True)
    keep = ids[1:][np.argsort(sizes[1:])[-3:]]  # the three largest nuclei on that slice
    truth = np.where(np.isin(truth, keep), truth, 0).astype(np.uint16)
    img_path, seed_path, out = tmp_path / "stack.tif", tmp_path / "seed.tif", tmp_path / "labels.tif"
    tifffile.imwrite(img_path, image)
    tifffile.imwrite(seed_path, truth)
    assert cli.main(["embed", str(img_path), *common]) == 0
    assert "10 slices embedded" in capsys.readouterr().out
    assert cli.main(["cache", "info", "--cache-dir", str(tmp_path / "c")]) == 0
    assert "10/10 slices of 61x57" in capsys.readouterr().out.replace(" x ", "x")
    assert cli.main(["segment", str(img_path), *common, "--seed-labels", str(seed_path), "--seed-slice", str(z),
                     "--out", str(out)]) == 0
    labels = tifffile.imread(out)
    assert labels.shape == image.shape
    ids = np.unique(truth[z])[1:]
    assert set(np.unique(labels[z])[1:]) == set(ids)  # every seeded object, under its own id
    for obj in ids:  # a mask prompt is SAM 2's output on its slice, up to resampling at the edges
        a, b = labels[z] == obj, truth[z] == obj
        assert (a & b).sum() / (a | b).sum() > 0.7, obj


def test_points_on_one_slice_form_one_prompt(sam2_files, common, tmp_path):
    ckpt, config = sam2_files
    image = tifffile.imread(DATA / "img3d.tif")[:8]
    path, out = tmp_path / "stack.tif", tmp_path / "labels.tif"
    tifffile.imwrite(path, image)
    assert cli.main(["segment", str(path), *common, "--point", "3,20,30", "--point", "3,25,31",
                     "--point", "6,40,12", "--out", str(out)]) == 0
    s = Session(image, load_model(checkpoint=ckpt, config=config, device="cpu"), axis=0, in_memory=True)
    s.add_prompt(1, 3, points=[[20, 30], [25, 31]], point_labels=[1, 1])
    s.add_prompt(1, 6, points=[[40, 12]], point_labels=[1])
    expected = np.zeros(image.shape, np.uint8)
    for index, logits in s.iter_propagate():
        expected[index] = logits[1] > 0
    np.testing.assert_array_equal(tifffile.imread(out), expected)


def test_cache_clear(sam2_files, common, tmp_path, capsys):
    path = tmp_path / "s.tif"
    tifffile.imwrite(path, tifffile.imread(DATA / "img3d.tif")[:3])
    assert cli.main(["embed", str(path), *common]) == 0
    assert cli.main(["cache", "clear", "--cache-dir", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert "freed" in out and "0 stack(s)" in out


def test_segment_bad_seeds_prompts_and_output_are_messages(sam2_files, common, tmp_path, capsys):
    path = tmp_path / "s.tif"
    tifffile.imwrite(path, tifffile.imread(DATA / "img3d.tif")[:4])
    seeds = tmp_path / "seeds.tif"
    tifffile.imwrite(seeds, np.zeros((4, 61, 57), np.uint16))
    bad_json = tmp_path / "p.json"
    bad_json.write_text('[{"index": 1, "points": [[3, 4]]}]')
    cases = [
        (["--seed-labels", str(seeds), "--seed-slice", "99"], "out of range"),
        (["--prompts", str(bad_json)], "expected a JSON list"),
        (["--point", "1,3,4", "--out", str(tmp_path / "nowhere" / "o.tif")], "does not exist"),
    ]
    for extra, msg in cases:
        argv = ["segment", str(path), *common, *extra]
        if "--out" not in extra:
            argv += ["--out", str(tmp_path / "o.tif")]
        assert cli.main(argv) == 2
        assert msg in capsys.readouterr().err
    assert not (tmp_path / "o.tif").exists()
