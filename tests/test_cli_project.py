"""``segment --project``: write an annotation project napari opens, and run on a saved one."""

from __future__ import annotations

import json

import numpy as np
import tifffile

from napari_sam_stack import Annotation, cli, io
from napari_sam_stack.project import is_project
from napari_sam_stack.testing import synthetic_nuclei


def test_segment_writes_a_project_then_reruns_it(sam2_files, sam2_model, tmp_path, capsys):
    ckpt, config = sam2_files
    model = ["--checkpoint", str(ckpt), "--config", str(config), "--device", "cpu", "--cache-dir", str(tmp_path / "c")]
    image = synthetic_nuclei((5, 61, 57), n_nuclei=3, seed=4)[0]
    stack, project = tmp_path / "stack.tif", tmp_path / "stack.sam"
    tifffile.imwrite(stack, image)
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps([{"obj": 2, "index": 1, "points": [[20, 30]]}]))
    assert cli.main(["segment", str(stack), "--prompts", str(prompts), "--project", str(project),
                     "--out", str(tmp_path / "a.tif"), *model]) == 0
    assert "saved project" in capsys.readouterr().out and is_project(project)
    a = Annotation.open(project, model=sam2_model)  # what a napari user opens: the image is found by its path
    assert list(a.objects) == [2] and a.objects[2].status == "committed" and 1 in a.objects[2].prompts
    first = tifffile.imread(tmp_path / "a.tif")
    np.testing.assert_array_equal(a.labels, first)
    assert first.dtype == np.uint32 and 2 in first
    # add a second object to the saved project from the command line
    assert cli.main(["segment", str(stack), "--point", "3,40,12", "--obj", "5", "--project", str(project), *model]) == 0
    b = Annotation.open(project, model=sam2_model)
    assert sorted(b.objects) == [2, 5]
    # re-run the saved project alone (its image found by the stored path) and write its labels
    out = tmp_path / "b.zarr"
    assert cli.main(["segment", "--project", str(project), "--out", str(out), *model]) == 0
    labels = np.asarray(io.read_image(out).data)
    np.testing.assert_array_equal(labels, b.labels)
    assert set(np.unique(labels)) <= {0, 2, 5}


def test_project_errors_are_one_line(sam2_files, tmp_path, capsys):
    ckpt, config = sam2_files
    model = ["--checkpoint", str(ckpt), "--config", str(config), "--device", "cpu"]
    (tmp_path / "not-a-project").mkdir()
    (tmp_path / "not-a-project" / "mine.txt").write_text("keep")
    for argv, msg in ((["segment", "--project", str(tmp_path / "missing.sam"), "--out", str(tmp_path / "o.tif")],
                       "no such project"),
                      (["segment", "--project", str(tmp_path / "not-a-project"), *model], "project")):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1
    assert (tmp_path / "not-a-project" / "mine.txt").read_text() == "keep"
    assert not (tmp_path / "o.tif").exists()
