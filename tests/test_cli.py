"""The console script, run in-process through cli.main with real files."""

from __future__ import annotations

import numpy as np
import tifffile

from napari_sam_stack import Session, cli, load_model
from napari_sam_stack.testing import synthetic_nuclei


def test_models_lists_registry(capsys):
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    assert "sam2.1_hiera_tiny" in out and "dl.fbaipublicfiles.com" in out and "weights cache" in out


def test_unknown_model_is_a_clean_error(tmp_path, capsys):
    tifffile.imwrite(tmp_path / "s.tif", np.zeros((2, 8, 8), np.uint8))
    assert cli.main(["embed", str(tmp_path / "s.tif"), "--model", "nope"]) == 2
    assert "Valid names" in capsys.readouterr().err


def test_embed_then_segment_headless(sam2_files, tmp_path, capsys):
    ckpt, config = sam2_files
    image, truth = synthetic_nuclei((8, 40, 52), n_nuclei=3, seed=2)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, image)
    common = ["--checkpoint", str(ckpt), "--config", str(config), "--device", "cpu", "--cache-dir", str(tmp_path / "c")]
    assert cli.main(["embed", str(path), *common]) == 0
    assert "8 slices embedded" in capsys.readouterr().out
    z, r, c = np.argwhere(truth == 1).mean(0).round().astype(int)
    out = tmp_path / "labels.tif"
    assert cli.main(["segment", str(path), *common, "--point", f"{z},{r},{c}", "--out", str(out)]) == 0
    labels = tifffile.imread(out)
    # the same prompts through the Python API give the same labels (coordinates, axis, ids)
    s = Session(image, load_model(checkpoint=ckpt, config=config, device="cpu"), axis=0, in_memory=True)
    s.add_prompt(1, int(z), points=[[r, c]], point_labels=[1])
    np.testing.assert_array_equal(labels, s.propagate())
