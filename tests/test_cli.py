"""The console script end to end, in-process through cli.main, on generated files and a tiny
random-weight SAM 2 checkpoint loaded through the real loader."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

import napari_sam_stack
from napari_sam_stack import Session, cli, io
from napari_sam_stack.errors import PromptError
from napari_sam_stack.testing import synthetic_nuclei

DATA = Path(napari_sam_stack.__file__).parent / "data"  # real stardist nuclei, shipped with the package


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A uint16 z-stack (TIFF), the same as OME-TIFF ZCYX (2 channels), as a TYX time series and as OME-Zarr."""
    d = tmp_path_factory.mktemp("inputs")
    image, truth = synthetic_nuclei((6, 61, 57), n_nuclei=4, seed=3)
    tifffile.imwrite(d / "stack.tif", image)
    zcyx = np.stack([image // 2, image], axis=1)
    tifffile.imwrite(d / "zcyx.ome.tif", zcyx, metadata={"axes": "ZCYX"}, ome=True)
    tifffile.imwrite(d / "time.ome.tif", image, metadata={"axes": "TYX"}, ome=True)
    io.write_labels(d / "stack.zarr", image, axes="ZYX")  # an OME-Zarr image (write_labels keeps any integer dtype)
    return {"dir": d, "image": image, "truth": truth, "zcyx": zcyx}


@pytest.fixture
def common(sam2_files, tmp_path):
    ckpt, config = sam2_files
    return ["--checkpoint", str(ckpt), "--config", str(config), "--device", "cpu", "--cache-dir", str(tmp_path / "c")]


def _expected(sam2_model, image, prompts, **frames):
    """Session.propagate on the same prompts: what the CLI must write."""
    s = Session(image, sam2_model, in_memory=True, **frames)
    for obj, index, kw in prompts:
        s.add_prompt(obj, index, **kw)
    return s.propagate()


def test_models_lists_registry(capsys):
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    assert "sam2.1_hiera_tiny" in out and "dl.fbaipublicfiles.com" in out and "weights cache" in out
    assert out.splitlines()[0].split() == ["name", "kind", "weights", "source"]
    (shipped,) = [line for line in out.splitlines() if line.startswith("nss_nuclei_micro")]
    assert "shipped" in shipped and "no download" in shipped


def test_console_script_and_module_run(tmp_path):
    out = subprocess.run([sys.executable, "-m", "napari_sam_stack.cli", "segment", "--help"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and "examples:" in out.stdout and "--prompts" in out.stdout and "--max-absent" in out.stdout
    from importlib.metadata import entry_points

    (ep,) = [e for e in entry_points(group="console_scripts") if e.name == "napari-sam-stack"]
    assert ep.load() is cli.main


def test_embed_info_then_segment_from_json(files, sam2_model, common, tmp_path, capsys):
    stack = files["dir"] / "stack.tif"
    assert cli.main(["embed", str(stack), *common]) == 0
    out, err = capsys.readouterr()
    assert "6 slices to embed, about" in out and "MB per slice" in out and "6 slices embedded" in out
    assert "FutureWarning" not in err and "0/0" not in err and " 0slice [" not in err  # (an empty bar)
    assert cli.main(["embed", str(stack), *common]) == 0
    out, err = capsys.readouterr()
    assert "all 6 slices already in the cache" in out and "slice/s" not in err  # no empty bar
    assert cli.main(["cache", "info", "--cache-dir", str(tmp_path / "c")]) == 0
    info = capsys.readouterr().out
    assert "stack.tif" in info and "6x61x57" in info and "6/6 slices" in info and "sam2_tiny" in info and "1 stack" in info
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps([{"obj": 1, "index": 2, "points": [[20, 30], [25, 31]], "labels": [1, 0]},
                                   {"obj": 7, "index": 3, "box": [50, 10, 61, 22]}]))  # touches the bottom edge
    out = tmp_path / "labels.tif"
    assert cli.main(["segment", str(stack), "--prompts", str(prompts), "--out", str(out), *common]) == 0
    assert "wrote" in capsys.readouterr().out
    one = tmp_path / "one.tif"  # a 2D image: its one slice is slice 0, and the report says what was written
    tifffile.imwrite(one, files["image"][2])
    assert cli.main(["segment", str(one), "--point", "0,20,30", "--out", str(tmp_path / "one_labels.tif"), *common]) == 0
    said = capsys.readouterr().out
    assert "61x57 uint32" in said and "slice" not in said and tifffile.imread(tmp_path / "one_labels.tif").shape == (61, 57)
    labels = tifffile.imread(out)
    assert labels.shape == (6, 61, 57) and labels.dtype == np.uint32
    expected = _expected(sam2_model, files["image"], [
        (1, 2, {"points": [[20, 30], [25, 31]], "point_labels": [1, 0]}),
        (7, 3, {"box": [49.5, 9.5, 60.5, 21.5]})])  # pixel bounds -> napari coordinates
    np.testing.assert_array_equal(labels, expected)
    assert set(np.unique(labels)) <= {0, 1, 7}


def test_segment_from_napari_points_and_shapes_csv(files, sam2_model, common, tmp_path, capsys):
    from napari_builtins.io._write import napari_write_points, napari_write_shapes

    pts = tmp_path / "points.csv"  # what napari's File > Save Selected Layers writes for the widget's points layer
    napari_write_points(str(pts), np.array([[2, 20, 30], [2, 25, 31], [4, 40, 12]], float),
                        {"properties": {"label": np.array(["positive", "negative", "positive"])}})
    boxes = tmp_path / "boxes.csv"
    rect = np.array([[3, 49.5, 9.5], [3, 49.5, 21.5], [3, 60.5, 21.5], [3, 60.5, 9.5]])
    napari_write_shapes(str(boxes), [rect], {"shape_type": ["rectangle"]})
    out = tmp_path / "l.zarr"
    assert cli.main(["segment", str(files["dir"] / "stack.tif"), "--prompts", str(pts), "--prompts", str(boxes),
                     "--obj", "3", "--out", str(out), *common]) == 0
    assert "prompts: points.csv: object 3; boxes.csv: object 4" in capsys.readouterr().out
    labels = np.asarray(io.read_image(out).data)
    expected = _expected(sam2_model, files["image"], [
        (3, 2, {"points": [[20, 30], [25, 31]], "point_labels": [1, 0]}),
        (3, 4, {"points": [[40, 12]], "point_labels": [1]}),
        (4, 3, {"box": [49.5, 9.5, 60.5, 21.5]})])  # a second file without ids goes on after the ids used
    np.testing.assert_array_equal(labels, expected)
    assert labels.dtype == np.uint32


def test_segment_says_when_an_object_got_no_pixel(files, common, tmp_path, capsys):
    """Two objects with the same click: the first wins every pixel (ties go to the first); the second is
    named in a warning instead of vanishing from the output without a word."""
    from napari_builtins.io._write import napari_write_points

    pts = tmp_path / "same.csv"
    napari_write_points(str(pts), np.array([[2, 20, 30]], float), {"properties": {"label": np.array(["positive"])}})
    out = tmp_path / "o.tif"
    assert cli.main(["segment", str(files["dir"] / "stack.tif"), "--point", "2,20,30", "--prompts", str(pts),
                     "--out", str(out), *common]) == 0
    err = capsys.readouterr().err
    assert "warning: object 2 got no pixel" in err
    assert set(np.unique(tifffile.imread(out))) <= {0, 1}


def test_prompt_files_without_ids_never_merge_objects(files, tmp_path, capsys, monkeypatch):
    # Two napari CSVs with --obj 3 used to become one object: the points and a rectangle on
    # another nucleus were propagated as one. Ids now follow docs/cli.md ("Object ids").
    from napari_builtins.io._write import napari_write_points, napari_write_shapes

    from napari_sam_stack.cli import _segment

    pts, boxes, js = tmp_path / "points.csv", tmp_path / "boxes.csv", tmp_path / "p.json"
    napari_write_points(str(pts), np.array([[5, 30, 20], [5, 35, 25], [4, 40, 35]], float),
                        {"properties": {"label": np.array(["positive", "negative", "positive"])}})
    rects = [np.array([[5, 10, 10], [5, 10, 30], [5, 30, 30], [5, 30, 10]]),
             np.array([[2, 40, 40], [2, 40, 50], [2, 50, 50], [2, 50, 40]])]
    napari_write_shapes(str(boxes), rects, {"shape_type": ["rectangle", "rectangle"]})
    js.write_text('[{"obj": 4, "index": 1, "points": [[12, 12]]}]')
    monkeypatch.setattr(_segment.c, "load", lambda args: pytest.fail("no model needed to number objects"))

    def run(*argv):
        args = cli.build_parser(["segment"]).parse_args(["segment", str(files["dir"] / "stack.tif"), *argv,
                                                         "--out", str(tmp_path / "o.tif")])
        img, opts, frames = _segment.c.open_view(args.image, args)
        return {(it.obj, it.index): it for it in _segment.collect(args, _segment._view(frames, opts, img), frames)}

    seen = run("--prompts", str(pts), "--prompts", str(boxes), "--obj", "3")
    assert sorted(seen) == [(3, 4), (3, 5), (4, 5), (5, 2)]  # points: one object; each rectangle its own
    assert seen[(3, 5)].labels == [1, 0] and seen[(4, 5)].box is not None and not seen[(4, 5)].points
    assert "points.csv: object 3; boxes.csv: objects 4-5" in capsys.readouterr().out
    # a file's own ids are kept, and files without ids skip them; the flags are --obj
    seen = run("--prompts", str(js), "--prompts", str(pts), "--point", "1,20,20")
    assert sorted(seen) == [(1, 1), (2, 4), (2, 5), (4, 1)]
    # the same object on the same slice from two sources is refused, naming both
    with pytest.raises(PromptError, match="--prompts p.json, item 1 and --point 1,5,5 both prompt object 4 on slice 1"):
        run("--prompts", str(js), "--point", "1,5,5", "--obj", "4")
    before = sorted(p.name for p in tmp_path.iterdir())
    assert cli.main(["segment", str(files["dir"] / "stack.tif"), "--prompts", str(js), "--point", "1,5,5", "--obj", "4",
                     "--out", str(tmp_path / "o.tif"), "--checkpoint", str(js), "--config", "c.yaml"]) == 2
    err = capsys.readouterr().err
    assert "both prompt object 4 on slice 1" in err and "different ids" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_ome_tiff_zcyx_channel_and_time_series(files, sam2_model, common, tmp_path, capsys):
    zcyx, out = files["dir"] / "zcyx.ome.tif", tmp_path / "z.tif"
    assert cli.main(["embed", str(zcyx), *common]) == 2  # two channels: which?
    err = capsys.readouterr().err.strip()
    assert "2 channels" in err and "--channel 0" in err and len(err.splitlines()) == 1
    args = ["--point", "2,20,30", "--channel", "1", "--stop", "4", "--max-absent", "3", *common]
    assert cli.main(["segment", str(zcyx), "--out", str(out), *args]) == 0
    s = Session(files["zcyx"], sam2_model, axis=0, channel_axis=1, channel=1, in_memory=True)
    s.add_prompt(1, 2, points=[[20, 30]])
    np.testing.assert_array_equal(tifffile.imread(out), s.propagate(stop=4, max_absent=3))
    t_out = tmp_path / "t.tif"
    assert cli.main(["segment", str(files["dir"] / "time.ome.tif"), "--point", "1,20,30", "--out", str(t_out), *common]) == 0
    img = io.read_image(t_out)
    assert img.axes == "TYX" and img.shape == (6, 61, 57)
    s = Session(files["image"], sam2_model, axis=0, in_memory=True)  # a time series: tracks never stop by default
    s.add_prompt(1, 1, points=[[20, 30]])
    np.testing.assert_array_equal(img.data, s.propagate())


def test_segment_stops_absent_tracks_on_z_by_default_and_off_says_never(files, sam2_model, common, tmp_path):
    """Like the widget's 'stop after absent': 1 on a z axis unless --max-absent says otherwise (off / 0 / N)."""
    stack = files["dir"] / "stack.tif"
    s = Session(files["image"], sam2_model, axis=0, in_memory=True)
    s.add_prompt(1, 2, points=[[20, 30]])
    for k, (flags, want) in enumerate((([], 1), (["--max-absent", "off"], None), (["--max-absent", "0"], None),
                                       (["--max-absent", "2"], 2))):
        out = tmp_path / f"z{k}.tif"
        assert cli.main(["segment", str(stack), "--point", "2,20,30", "--out", str(out), *flags, *common]) == 0
        np.testing.assert_array_equal(tifffile.imread(out), s.propagate(max_absent=want))


def test_ome_zarr_input(files, sam2_model, common, tmp_path):
    out = tmp_path / "o.tif"
    assert cli.main(["segment", str(files["dir"] / "stack.zarr"), "--point", "3,30,28", "--out", str(out), *common]) == 0
    np.testing.assert_array_equal(tifffile.imread(out), _expected(sam2_model, files["image"], [(1, 3, {"points": [[30, 28]]})]))


def test_seed_labels_from_real_nuclei(sam2_files, common, tmp_path):
    """Annotate one slice of the real nuclei stack, propagate it headless, get those ids back."""
    image = tifffile.imread(DATA / "img3d.tif")[:6]
    truth = tifffile.imread(DATA / "mask3d.tif")[:6].astype(np.uint16)
    z = 3
    ids, sizes = np.unique(truth[z], return_counts=True)
    keep = ids[1:][np.argsort(sizes[1:])[-3:]]  # the three largest nuclei on that slice
    truth = np.where(np.isin(truth, keep), truth, 0).astype(np.uint16)
    img_path, seed_path, out = tmp_path / "stack.tif", tmp_path / "seed.tif", tmp_path / "labels.tif"
    tifffile.imwrite(img_path, image)
    tifffile.imwrite(seed_path, truth)
    assert cli.main(["segment", str(img_path), *common, "--seed-labels", str(seed_path), "--seed-slice", str(z),
                     "--out", str(out)]) == 0
    labels = tifffile.imread(out)
    assert labels.shape == image.shape and labels.dtype == np.uint32
    assert set(np.unique(labels[z])[1:]) == set(keep)  # every seeded object, under its own id
    for obj in keep:  # a mask prompt is SAM 2's output on its slice, up to resampling at the edges
        a, b = labels[z] == obj, truth[z] == obj
        assert (a & b).sum() / (a | b).sum() > 0.7, obj


def test_auto_on_a_stack_and_a_2d_image(files, common, tmp_path, capsys):
    out = tmp_path / "auto.tif"
    assert cli.main(["auto", str(files["dir"] / "stack.tif"), "--out", str(out), "--key-slices", "2",
                     "--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-score-thresh", "0", *common]) == 0
    labels = tifffile.imread(out)
    assert labels.shape == (6, 61, 57) and labels.dtype == np.uint32
    assert "instance" in capsys.readouterr().out
    img2d = tmp_path / "one.tif"
    tifffile.imwrite(img2d, files["image"][2])
    out2 = tmp_path / "one_labels.tif"
    assert cli.main(["auto", str(img2d), "--out", str(out2), "--points-per-side", "4", "--pred-iou-thresh", "0",
                     "--stability-score-thresh", "0", *common]) == 0
    assert tifffile.imread(out2).shape == (61, 57)


def test_folder_run_with_one_bad_file_goes_on(files, common, tmp_path, capsys):
    folder, results = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    results.mkdir()
    for k in range(2):
        tifffile.imwrite(folder / f"s{k}.tif", files["image"][:3] + k, photometric="minisblack")
    (folder / "broken.tif").write_bytes(b"II*\x00 not really a tiff")
    (folder / "notes.txt").write_text("not an image: skipped")
    assert cli.main(["embed", str(folder), *common]) == 1
    out = capsys.readouterr().out
    assert "broken.tif" in out and "2 stacks embedded, 1 failed" in out
    assert cli.main(["auto", str(folder / "*.tif"), "--out", str(results), "--every", "2", "--points-per-side", "2",
                     *common]) == 1
    out = capsys.readouterr().out
    assert "2 stacks segmented, 1 failed" in out and "error: broken.tif" in out
    assert sorted(p.name for p in results.iterdir()) == ["s0_labels.tif", "s1_labels.tif"]


def test_cache_dir_that_is_a_file_or_empty(files, common, tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    base = [a for a in common if a not in ("--cache-dir", str(tmp_path / "c"))]
    for bad, msg in ((str(f), "is a file"), ("", "empty path")):
        assert cli.main(["embed", str(files["dir"] / "stack.tif"), *base, "--cache-dir", bad]) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1 and "embedded" not in err
    assert f.read_text() == "x"


def test_cache_clear_one_entry(files, common, tmp_path, capsys):
    cache = tmp_path / "c"
    stack = files["dir"] / "stack.tif"
    assert cli.main(["embed", str(stack), *common]) == 0
    assert cli.main(["embed", str(files["dir"] / "zcyx.ome.tif"), "--channel", "0", "--batch-size", "2", *common]) == 0
    capsys.readouterr()
    entries = sorted(p.name for p in cache.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(entries) == 2
    (cache / "keep-me").mkdir()
    assert cli.main(["cache", "clear", entries[0][:8], "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out
    assert "freed" in out and "1 stack" in out
    assert sorted(p.name for p in cache.iterdir() if not p.name.startswith(".")) == sorted([entries[1], "keep-me"])
    assert cli.main(["cache", "clear", "nothing-like-it", "--cache-dir", str(cache)]) == 2
    assert cli.main(["cache", "clear", "--cache-dir", str(cache)]) == 0
    assert sorted(p.name for p in cache.iterdir() if not p.name.startswith(".")) == ["keep-me"]


def test_auto_max_absent_reaches_the_propagation(files, common, tmp_path, monkeypatch):
    import warnings

    from napari_sam_stack import automatic

    seen = []
    real = automatic.add_automatic
    monkeypatch.setattr(automatic, "add_automatic", lambda *a, **kw: seen.append(kw["max_absent"]) or real(*a, **kw))
    # the default on a z-stack is 1 (as in the widget); 'off' / 0 run tracks to the end of the stack
    for k, (flags, want) in enumerate((([], 1), (["--max-absent", "2"], 2), (["--max-absent", "off"], None),
                                       (["--max-absent", "0"], None))):
        out = tmp_path / f"auto{k}.tif"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", automatic.NothingFoundWarning)
            assert cli.main(["auto", str(files["dir"] / "stack.tif"), "--out", str(out), "--key-slices", "2",
                             "--points-per-side", "2", "--pred-iou-thresh", "0", *flags, *common]) == 0
        assert seen[-1] == want and out.exists()
    assert cli.main(["auto", str(files["dir"] / "stack.tif"), "--out", str(tmp_path / "x.tif"), "--max-absent", "-1",
                     *common]) == 2
    assert not (tmp_path / "x.tif").exists()


def test_auto_starts_from_the_models_own_defaults_and_flags_override_them(tmp_path):
    """The shipped nuclei model's registry entry carries thresholds of its own: `auto` gives what
    automatic.generate gives with them, and an explicit flag wins over them."""
    import warnings

    from napari_sam_stack import automatic, load_model
    from napari_sam_stack._widget._sample import DATA

    tile = tifffile.imread(DATA / "img2d.tif")[:128, 256:384]
    path = tmp_path / "tile.tif"
    tifffile.imwrite(path, tile)
    model = load_model("nss_nuclei_micro", device="cpu")
    own = automatic.defaults(model)
    assert own["multimask"] is False and own["pred_iou_thresh"] < automatic.MICROSCOPY["pred_iou_thresh"]
    for flags, params in (([], {}), (["--stability-score-thresh", "0.9", "--multimask"],
                                     {"stability_score_thresh": 0.9, "multimask": True})):
        out = tmp_path / f"labels{len(flags)}.tif"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", automatic.NothingFoundWarning)
            assert cli.main(["auto", str(path), "--out", str(out), "--model", "nss_nuclei_micro", "--device", "cpu",
                             "--points-per-side", "8", *flags]) == 0
            want, _ = automatic.generate(Session(tile, model, axis=None, in_memory=True), 0,
                                         **{**own, "points_per_side": 8, **params})
        np.testing.assert_array_equal(tifffile.imread(out), want)
    assert tifffile.imread(tmp_path / "labels0.tif").any()  # the model's own thresholds find nuclei
