"""Project folders: save -> open gives the same annotation; changed image / model, damaged or
foreign projects are refused with a ProjectError and nothing is touched."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import napari_sam_stack as nss
from napari_sam_stack.annotation import Status
from napari_sam_stack.errors import ProjectError
from napari_sam_stack.project import MARKER

SHAPE = (6, 48, 64)


@pytest.fixture(scope="module")
def image():
    from napari_sam_stack.testing import synthetic_nuclei

    return synthetic_nuclei(SHAPE, n_nuclei=4, seed=5)[0]


def rect(r0, r1, c0, c1):
    m = np.zeros(SHAPE[1:], bool)
    m[r0:r1, c0:c1] = True
    return m


def annotate(image, model):
    """Four objects: clicks with a chosen candidate, a box, a mask, clicks refining a mask; several
    statuses (committed, edited after commit, propagated, draft)."""
    a = nss.Annotation(image, model, axis=0, in_memory=True)
    i1, i2, i3, i4 = (a.new_object() for _ in range(4))
    a.add_prompt(i1, 1, points=[[20.5, 30]])
    a.set_candidate(i1, 1, 1)
    a.add_prompt(i2, 3, box=[5, 6, 25.5, 40])
    a.add_prompt(i2, 4, points=[[10, 10], [12, 30]], point_labels=[1, 0])
    a.add_prompt(i3, 2, mask=rect(30, 45, 40, 60))
    a.propagate([i1, i2, i3])
    a.commit([i1, i3])
    a.add_prompt(i3, 4, mask=rect(30, 44, 40, 60))  # edited after commit
    a.add_prompt(i4, 0, points=[[40, 10]], mask=rect(35, 46, 2, 20))  # a click refining a mask: draft
    return a


def same_prompt(p, q):
    for f in ("points", "labels", "box", "mask"):
        x, y = getattr(p, f), getattr(q, f)
        assert (x is None) == (y is None), f
        if x is not None:
            assert x.dtype == y.dtype and np.array_equal(x, y), f
    assert p.mask_is_logits == q.mask_is_logits


def assert_same(a, b):
    assert np.array_equal(a.labels, b.labels) and b.labels.dtype == np.uint32
    assert list(a.objects) == list(b.objects)
    for o in a.objects:
        x, y = a.objects[o], b.objects[o]
        assert (x.status, x.committed, x.propagated) == (y.status, y.committed, y.propagated)
        assert x.candidate == y.candidate and list(x.prompts) == list(y.prompts)
        for i in x.prompts:
            same_prompt(x.prompts[i], y.prompts[i])
        assert list(x.conditioning) == list(y.conditioning)
        for i in x.conditioning:
            same_prompt(x.conditioning[i], y.conditioning[i])
        assert x.slices() == y.slices()
        for i in x.slices():
            assert np.array_equal(x.masks.confidence(i), y.masks.confidence(i))
    assert {o: list(p) for o, p in a.session.prompts.items()} == {o: list(p) for o, p in b.session.prompts.items()}


def files(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def saved(image, sam2_model, tmp_path_factory):
    a = annotate(image, sam2_model)
    path = a.save(tmp_path_factory.mktemp("proj") / "nuclei.sam")
    return a, path


def test_save_open_roundtrip_and_propagate_again(saved, image, sam2_model):
    a, path = saved
    assert [a.objects[o].status for o in a.objects] == [Status.COMMITTED, Status.PROPAGATED, Status.EDITED,
                                                        Status.DRAFT]
    meta = json.loads((path / MARKER).read_text())
    assert meta["format"] == 1 and meta["kind"] == "napari-sam-stack project"
    with np.load(path / "arrays.npz", allow_pickle=False) as npz:  # never pickles
        assert all(npz[k].dtype != object for k in npz.files)
    b = nss.Annotation.open(path, image=image, model=sam2_model)
    assert_same(a, b)
    assert b.project_path == path and b.new_object() == 5
    # propagating again gives the same masks, and committing them the same labels
    ids = [1, 2, 3]
    for x in (a, b):
        x.propagate(ids)
        x.commit(ids)
    assert np.array_equal(a.labels, b.labels)
    for o in ids:
        for i in range(SHAPE[0]):
            assert np.array_equal(a.objects[o].masks.confidence(i), b.objects[o].masks.confidence(i))


def test_open_reads_the_image_from_its_source(tmp_path, image, sam2_model):
    import tifffile

    tif = tmp_path / "stack.tif"
    tifffile.imwrite(tif, image)
    a = nss.Annotation(str(tif), sam2_model, axis=0, in_memory=True)
    assert a.source == str(tif.resolve())
    i = a.new_object()
    a.add_prompt(i, 2, mask=rect(5, 15, 5, 15))
    a.commit()
    a.save(tmp_path / "p.sam")
    b = nss.Annotation.open(tmp_path / "p.sam", model=sam2_model)
    assert_same(a, b)
    tif.unlink()
    with pytest.raises(ProjectError, match="not there"):
        nss.Annotation.open(tmp_path / "p.sam", model=sam2_model)


def test_changed_image_is_refused_in_one_line(saved, image, sam2_model):
    _, path = saved
    before = files(path)
    changed = image.copy()
    changed[3, 10, 10] += 500
    cases = [(changed, "pixels differ"), (image[:, :, :-1], "shape"), (image.astype(np.float32), "dtype")]
    for img, what in cases:
        with pytest.raises(ProjectError, match="image changed") as e:
            nss.Annotation.open(path, image=img, model=sam2_model)
        assert what in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ProjectError, match=r"not the project's image: it was made on an image of shape \(") as e:
        nss.Annotation.open(path, image=image[0], model=sam2_model)  # a 2D image: not 'pass axis=None'
    assert "axis" not in str(e.value)
    assert files(path) == before


def test_other_model_is_refused_unless_allowed(saved, image, model_dir):
    from napari_sam_stack.testing import load_tiny_sam2

    _, path = saved
    other = load_tiny_sam2(model_dir / "other", seed=1)
    with pytest.raises(ProjectError, match="made with the model"):
        nss.Annotation.open(path, image=image, model=other)
    with pytest.warns(UserWarning, match="continuing with the new model"):
        b = nss.Annotation.open(path, image=image, model=other, allow_model_change=True)
    assert b.session.model is other and len(b.objects) == 4
    with pytest.raises(ProjectError, match="local checkpoint"):
        nss.Annotation.open(path, image=image)  # a local checkpoint is not found by itself
    with pytest.raises(ProjectError, match="cannot change"):
        nss.Annotation.open(path, image=image, model=other, channel=0)


def damage(kind, path: Path):
    meta = path / MARKER
    if kind == "truncated arrays":
        data = (path / "arrays.npz").read_bytes()
        (path / "arrays.npz").write_bytes(data[: len(data) // 2])
    elif kind == "missing arrays":
        (path / "arrays.npz").unlink()
    elif kind == "flipped label chunk":
        chunk = next(p for p in (path / "labels.zarr").rglob("*") if p.is_file() and p.name != "zarr.json")
        data = bytearray(chunk.read_bytes())
        data[len(data) // 2] ^= 0xFF
        chunk.write_bytes(bytes(data))
    elif kind == "missing label chunk":
        next(p for p in (path / "labels.zarr").rglob("*") if p.is_file() and p.name != "zarr.json").unlink()
    elif kind == "truncated metadata":
        text = meta.read_text()
        meta.write_text(text[: len(text) // 2])
    elif kind == "edited metadata":
        m = json.loads(meta.read_text())
        m["objects"][0]["prompts"]["1"]["points"] = [[1e6, 3]]
        meta.write_text(json.dumps(m))
    elif kind == "bad status":
        m = json.loads(meta.read_text())
        m["objects"][0]["status"] = "done?"
        meta.write_text(json.dumps(m))
    elif kind == "newer format":
        m = json.loads(meta.read_text())
        m["format"] = 99
        meta.write_text(json.dumps(m))
    elif kind == "foreign":
        meta.write_text(json.dumps({"kind": "something else", "format": 1}))
    elif kind == "no marker":
        meta.unlink()


@pytest.mark.parametrize("kind, message", [
    ("truncated arrays", "damaged"), ("missing arrays", "damaged"), ("flipped label chunk", "damaged"),
    ("missing label chunk", "damaged"), ("truncated metadata", "damaged"), ("edited metadata", "damaged"),
    ("bad status", "damaged"), ("newer format", "newer napari-sam-stack"), ("foreign", "not a napari-sam-stack"),
    ("no marker", "not a napari-sam-stack"),
])
def test_damaged_project_is_refused_and_untouched(saved, image, sam2_model, tmp_path, kind, message):
    _, path = saved
    copy = tmp_path / "copy.sam"
    shutil.copytree(path, copy)
    damage(kind, copy)
    before = files(copy)
    with pytest.raises(ProjectError, match=message):
        nss.Annotation.open(copy, image=image, model=sam2_model)
    assert files(copy) == before
    with pytest.raises(ProjectError, match="no project"):
        nss.Annotation.open(tmp_path / "nothing.sam", image=image, model=sam2_model)


def test_save_never_replaces_what_it_must_not(saved, tmp_path, image, sam2_model):
    a, path = saved
    user_file = tmp_path / "notes.sam"
    user_file.write_text("my notes")
    folder = tmp_path / "data.sam"
    folder.mkdir()
    (folder / "cells.csv").write_text("1,2,3")
    for target in (user_file, folder):
        for overwrite in (False, True):
            with pytest.raises(ProjectError, match="not a napari-sam-stack project"):
                a.save(target, overwrite=overwrite)
    assert user_file.read_text() == "my notes" and files(folder) == {"cells.csv": b"1,2,3"}
    with pytest.raises(ProjectError, match="does not exist"):
        a.save(tmp_path / "missing" / "x.sam")
    for bad in (lambda: a.save(123), lambda: a.save(""), lambda: a.save(tmp_path / "y.sam", overwrite="no"),
                lambda: nss.Annotation.open(None), lambda: nss.Annotation.open(path, allow_model_change=1)):
        with pytest.raises(ProjectError):
            bad()
    # another project: only with overwrite=True
    b = nss.Annotation.open(path, image=image, model=sam2_model)
    other = b.save(tmp_path / "other.sam")
    with pytest.raises(ProjectError, match="overwrite=True"):
        a.save(other)
    a.save(other, overwrite=True)
    assert a.project_path == other
    # its own project is re-saved without asking; no temporary folder is left beside it
    i = a.new_object()
    a.add_prompt(i, 0, mask=rect(0, 4, 0, 4))
    a.save(other)
    assert nss.Annotation.open(other, image=image, model=sam2_model).objects.keys() == a.objects.keys()
    assert sorted(os.listdir(tmp_path)) == ["data.sam", "notes.sam", "other.sam"]


@pytest.mark.parametrize("case", ["time series of 4D (t, z, y, x) at z=2", "one 2D image", "RGB stack"])
def test_roundtrip_keeps_the_view(case, tmp_path, sam2_model):
    rng = np.random.default_rng(1)
    if case.startswith("time"):
        img, kw, shape = rng.integers(0, 4000, (4, 3, 40, 50), np.uint16), {"axis": 0, "fixed": {1: 2}}, (4, 40, 50)
    elif case.startswith("one"):
        img, kw, shape = rng.integers(0, 255, (40, 50), np.uint8), {"axis": None}, (1, 40, 50)
    else:
        img, kw, shape = rng.integers(0, 255, (3, 40, 50, 3), np.uint8), {"axis": 0}, (3, 40, 50)
    a = nss.Annotation(img, sam2_model, in_memory=True, **kw)
    i = a.new_object()
    m = np.zeros(shape[1:], bool)
    m[5:15, 10:30] = True
    a.add_prompt(i, shape[0] - 1, mask=m)
    a.commit()
    b = nss.Annotation.open(a.save(tmp_path / "v.sam"), image=img, model=sam2_model)
    assert b.labels.shape == shape and b.session.frames.fixed == a.session.frames.fixed
    assert b.session.axis == a.session.axis and b.session.frames.channels == a.session.frames.channels
    assert_same(a, b)
    if case.startswith("time"):
        other = img.copy()
        other[:, 1] += 1  # another z plane changed only: the view at z=2 is the same image
        nss.Annotation.open(tmp_path / "v.sam", image=other, model=sam2_model)
        other[:, 2, 3, 3] += 7  # the viewed plane changed
        with pytest.raises(ProjectError, match="image changed"):
            nss.Annotation.open(tmp_path / "v.sam", image=other, model=sam2_model)
