"""``segment --project``: write an annotation project napari opens, and run on a saved one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tifffile

import napari_sam_stack
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


def test_rerunning_a_project_leaves_its_committed_objects_and_uses_its_model(tmp_path, capsys, monkeypatch):
    """A saved project's committed objects are the user's result: a re-run writes them out unchanged
    (no re-propagation, no `--max-absent` of its own); a new --point without --obj is a new object, committed
    around them; with no --model the project's own model is used (here the shipped one, offline)."""
    from napari_sam_stack import load_model

    data = Path(napari_sam_stack.__file__).parent / "data"  # real nuclei: the shipped model is made for them
    image, truth = (tifffile.imread(data / f)[15:20] for f in ("img3d.tif", "mask3d.tif"))

    def centre(z, not_id=None):  # the largest nucleus on slice z (another than not_id): its inner centre pixel
        ids = sorted((i for i in np.unique(truth[z]) if i and i != not_id), key=lambda i: -(truth[z] == i).sum())
        pts = np.argwhere(truth[z] == ids[0])
        r, c = pts[np.argmin(((pts - pts.mean(0)) ** 2).sum(1))]
        return f"{z},{r},{c}", ids[0]

    first, first_id = centre(1)
    second, _ = centre(3, not_id=first_id)
    stack, project = tmp_path / "stack.tif", tmp_path / "stack.sam"
    tifffile.imwrite(stack, image)
    common = ["--device", "cpu", "--cache-dir", str(tmp_path / "c")]
    assert cli.main(["segment", str(stack), "--point", first, "--max-absent", "1", "--project", str(project),
                     "--model", "nss_nuclei_micro", *common]) == 0
    model = load_model("nss_nuclei_micro", device="cpu")
    before = Annotation.open(project, model=model).labels.copy()
    assert (before == 1).any()
    calls = []
    real = Annotation.propagate
    monkeypatch.setattr(Annotation, "propagate", lambda self, ids=None, *a, **kw: calls.append(list(ids)) or real(self, ids, *a, **kw))
    from napari_sam_stack import models

    fetch = models.download_checkpoint  # (the shipped model comes from the package, through the same call)
    monkeypatch.setattr(models, "download_checkpoint", lambda name, **k: fetch(name, **k) if name == "nss_nuclei_micro"
                        else (_ for _ in ()).throw(AssertionError(f"{name} would be downloaded")))
    out = tmp_path / "again.tif"
    assert cli.main(["segment", "--project", str(project), "--out", str(out), *common]) == 0  # no --model
    assert calls == [] and "left as they were" in capsys.readouterr().out
    np.testing.assert_array_equal(tifffile.imread(out), before)
    assert cli.main(["segment", str(stack), "--point", second, "--project", str(project), *common]) == 0
    assert calls == [[2]]  # the new object only, with the next free id
    a = Annotation.open(project, model=model)
    assert sorted(a.objects) == [1, 2] and a.objects[2].status == "committed"
    np.testing.assert_array_equal(a.labels == 1, before == 1)  # object 1 untouched
