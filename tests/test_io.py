"""Reading images with their axes, writing labels safely (no model needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from napari_sam_stack import io
from napari_sam_stack.errors import ImageError, OutputError
from napari_sam_stack.normalise import Frames


def _ome(path, data, axes, **kw):
    tifffile.imwrite(path, data, metadata={"axes": axes}, ome=True, **kw)
    return path


def test_ome_tiff_axes_are_read_not_guessed(tmp_path):
    data = np.arange(5 * 2 * 20 * 30, dtype=np.uint16).reshape(5, 2, 20, 30)
    img = io.read_image(_ome(tmp_path / "zcyx.ome.tif", data, "ZCYX"))
    assert img.axes == "ZCYX" and img.shape == data.shape
    opts = io.view_options(img, channel=1)
    assert opts == {"axis": 0, "channel_axis": 1, "fixed": {}, "channel": 1}
    f = Frames(img.data, **opts)
    assert len(f) == 5 and f.frame_shape == (20, 30)
    np.testing.assert_array_equal(f.raw(3)[..., 0], data[3, 1])


def test_two_channels_without_a_choice_say_which_flag(tmp_path):
    img = io.read_image(_ome(tmp_path / "zcyx.ome.tif", np.zeros((4, 2, 8, 9), np.uint16), "ZCYX"))
    with pytest.raises(ImageError, match="--channel"):
        io.view_options(img)


def test_tzyx_needs_a_choice_and_fixed_picks_the_other(tmp_path):
    data = np.random.default_rng(0).integers(0, 255, (3, 4, 10, 12), dtype=np.uint8)
    img = io.read_image(_ome(tmp_path / "tzyx.ome.tif", data, "TZYX"))
    with pytest.raises(ImageError, match="--axis z --fixed t=0"):
        io.view_options(img)
    opts = io.view_options(img, axis="Z", fixed={"T": 2})
    assert opts["axis"] == 1 and opts["fixed"] == {0: 2}
    np.testing.assert_array_equal(Frames(img.data, **opts).raw(3), data[2, 3])
    opts = io.view_options(img, axis="t", fixed={1: 0})  # time series at z=0
    assert opts["axis"] == 0 and len(Frames(img.data, **opts)) == 3


def test_singleton_axes_are_fixed_and_time_series_slice_along_t(tmp_path):
    img = io.read_image(_ome(tmp_path / "t.ome.tif", np.zeros((6, 1, 10, 12), np.uint16), "TZYX"))
    assert img.axes == "TYX"  # (tifffile drops the length-1 Z)
    assert io.view_options(img) == {"axis": 0, "channel_axis": None, "fixed": {}, "channel": None}
    zarr.create_array(tmp_path / "t.zarr", shape=(6, 1, 10, 12), dtype="uint16", dimension_names=["t", "z", "y", "x"])
    img = io.read_image(tmp_path / "t.zarr")
    assert img.axes == "TZYX"
    assert io.view_options(img) == {"axis": 0, "channel_axis": None, "fixed": {1: 0}, "channel": None}


def test_plain_tiff_rgb_and_axes_override(tmp_path):
    tifffile.imwrite(tmp_path / "q.tif", np.zeros((5, 10, 12), np.uint16))
    with pytest.warns(io.AxesWarning, match="unnamed axis 0"):
        img = io.read_image(tmp_path / "q.tif")
    assert img.axes == "ZYX" and io.view_options(img)["axis"] == 0
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((10, 12, 3), np.uint8))
    img = io.read_image(tmp_path / "rgb.tif")
    assert img.axes == "YXS" and io.view_options(img) == {"axis": None, "channel_axis": 2, "fixed": {}, "channel": None}
    img = io.read_image(tmp_path / "q.tif", axes="zyx")  # given axes: no warning (filterwarnings=error would fail)
    assert img.axes == "ZYX"
    with pytest.raises(ImageError, match="3 letters"):
        io.read_image(tmp_path / "q.tif", axes="TZYX")
    with pytest.raises(ImageError, match="twice"):
        io.read_image(tmp_path / "q.tif", axes="ZZX")


def test_compressed_tiff_is_read_lazily_through_dask(tmp_path):
    import dask.array as da

    data = np.random.default_rng(1).integers(0, 4000, (4, 2, 16, 20), dtype=np.uint16)
    img = io.read_image(_ome(tmp_path / "c.ome.tif", data, "ZCYX", compression="zlib"))
    assert isinstance(img.data, da.Array) and img.axes == "ZCYX"
    np.testing.assert_array_equal(np.asarray(img.data), data)


def test_ome_zarr_v04_group_and_plain_zarr_arrays(tmp_path):
    import dask.array as da

    data = np.random.default_rng(2).integers(0, 9, (2, 3, 10, 12), dtype=np.uint16)
    g = zarr.open_group(tmp_path / "img.ome.zarr", mode="w", zarr_format=2)
    g.create_array("0", data=data, chunks=(1, 1, 10, 12))
    g.create_array("1", data=data[..., ::2, ::2])
    g.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"},
                                                         {"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
                               "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 0.5, 0.5]}]},
                                            {"path": "1"}]}]
    img = io.read_image(tmp_path / "img.ome.zarr")
    assert img.axes == "TCYX" and img.scale == (1, 1, 0.5, 0.5) and isinstance(img.data, da.Array)
    np.testing.assert_array_equal(np.asarray(img.data), data)  # level 0: full resolution
    a = zarr.create_array(tmp_path / "plain.zarr", shape=(3, 10, 12), dtype="uint8", dimension_names=["z", "y", "x"])
    a[...] = 7
    img = io.read_image(tmp_path / "plain.zarr")
    assert img.axes == "ZYX" and int(np.asarray(img.data).max()) == 7
    zarr.open_group(tmp_path / "bare.zarr", mode="w").create_array("raw", shape=(2, 4, 4), dtype="uint8")
    with pytest.raises(ImageError, match="bare.zarr/raw"):
        io.read_image(tmp_path / "bare.zarr")


def test_unreadable_inputs_are_image_errors(tmp_path):
    (tmp_path / "bad.tif").write_bytes(b"not a tiff at all")
    (tmp_path / "x.png").write_bytes(b"")
    for p, msg in ((tmp_path / "bad.tif", "not a readable TIFF"), (tmp_path / "missing.tif", "no such file"),
                   (tmp_path / "x.png", "not a TIFF")):
        with pytest.raises(ImageError, match=msg):
            io.read_image(p)


@pytest.mark.parametrize("name", ["l.tif", "l.ome.tif", "l.zarr"])
def test_labels_round_trip_keep_dtype_and_axes(tmp_path, name):
    labels = np.zeros((4, 20, 30), np.uint32)
    labels[1, 2:5, 3:9] = 70000  # over uint16: the dtype must survive
    labels[2, 10:12, 1:4] = 3
    out = io.write_labels(tmp_path / name, labels, axes="TYX")
    img = io.read_image(out)
    assert img.axes == "TYX" and img.data.dtype == np.uint32
    np.testing.assert_array_equal(np.asarray(img.data), labels)
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary file left
    if name.endswith(".tif"):
        with tifffile.TiffFile(out) as t:
            assert t.pages[0].compression != 1  # compressed


def test_existing_output_is_refused_then_replaced_with_overwrite(tmp_path):
    a, b = np.ones((2, 5, 5), np.uint32), np.full((2, 5, 5), 2, np.uint32)
    for name in ("o.tif", "o.zarr"):
        io.write_labels(tmp_path / name, a)
        with pytest.raises(OutputError, match="--overwrite"):
            io.write_labels(tmp_path / name, b)
        assert np.asarray(io.read_image(tmp_path / name).data).max() == 1
        io.write_labels(tmp_path / name, b, overwrite=True)
        assert np.asarray(io.read_image(tmp_path / name).data).max() == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.tif", "o.zarr"]


def test_inputs_are_never_written_over_or_into(tmp_path):
    src = tmp_path / "stack.tif"
    tifffile.imwrite(src, np.zeros((2, 5, 5), np.uint16))
    before = src.read_bytes()
    zdir = tmp_path / "img.zarr"
    zarr.create_array(zdir, shape=(2, 5, 5), dtype="uint8")
    labels = np.ones((2, 5, 5), np.uint32)
    for out, protect in ((src, [src]), (tmp_path / "." / "stack.tif", [src]), (zdir, [zdir]),
                         (zdir / "labels.zarr", [zdir]), (tmp_path / "x.zarr", [tmp_path / "x.zarr" / "0"])):
        with pytest.raises(OutputError, match="input"):
            io.write_labels(out, labels, overwrite=True, protect=protect)
    assert src.read_bytes() == before and not (zdir / "labels.zarr").exists()


def test_a_failed_write_leaves_the_previous_file(tmp_path, monkeypatch):
    out = io.write_labels(tmp_path / "o.tif", np.ones((2, 5, 5), np.uint32))
    before = out.read_bytes()

    def broken(fh, *a, **k):
        fh.write(b"II*\x00partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tifffile, "imwrite", broken)
    with pytest.raises(OSError, match="No space"):
        io.write_labels(out, np.full((2, 5, 5), 9, np.uint32), overwrite=True)
    assert out.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["o.tif"]


def test_bad_outputs_are_refused_before_writing(tmp_path):
    labels = np.ones((2, 5, 5), np.uint32)
    (tmp_path / "folder.zarr").mkdir()
    (tmp_path / "folder.zarr" / "mine.txt").write_text("keep")
    (tmp_path / "dir.tif").mkdir()
    cases = [(tmp_path / "o.png", "write labels as"), (tmp_path / "nowhere" / "o.tif", "does not exist"),
             ("", "empty"), (tmp_path / "folder.zarr", "not a zarr store"), (tmp_path / "dir.tif", "not a file")]
    for out, msg in cases:
        with pytest.raises(OutputError, match=msg):
            io.write_labels(out, labels, overwrite=True)
    with pytest.raises(OutputError, match="integer"):
        io.write_labels(tmp_path / "f.tif", np.ones((2, 5, 5), np.float32))
    assert (tmp_path / "folder.zarr" / "mine.txt").read_text() == "keep"


def test_npe2_writer_is_declared_and_writes(tmp_path):
    import npe2

    manifest = npe2.PluginManifest.from_file(Path(io.__file__).parent / "napari.yaml")
    writers = [w for w in manifest.contributions.writers or [] if "labels" in [str(t) for t in w.layer_types]]
    assert writers and {".tif", ".zarr"} <= set(writers[0].filename_extensions)
    cmd = next(c for c in manifest.contributions.commands if c.id == writers[0].command)
    assert cmd.python_name == "napari_sam_stack.io:napari_write_labels"
    labels = np.zeros((3, 6, 7), np.uint32)
    labels[1, 2, 3] = 5
    (path,) = io.napari_write_labels(str(tmp_path / "w.tif"), labels, {"scale": (1, 1, 1)})
    np.testing.assert_array_equal(tifffile.imread(path), labels)


@pytest.mark.parametrize("n", [3, 4])
def test_a_few_uint16_slices_are_a_stack_not_an_rgb_image(tmp_path, n):
    # tifffile.imwrite stores a (3|4, Y, X) array as planar RGB(A) when not told otherwise:
    # its S is a guess from the shape, and a 3-slice uint16 stack must not become one colour image.
    data = np.random.default_rng(3).integers(0, 4000, (n, 10, 12), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "few.tif", data)
    with tifffile.TiffFile(tmp_path / "few.tif") as tif:
        assert tif.series[0].axes == "SYX" and tif.pages[0].photometric == tifffile.PHOTOMETRIC.RGB
    with pytest.warns(io.AxesWarning, match=f"{n} slices") as rec:
        img = io.read_image(tmp_path / "few.tif")
    assert len(rec) == 1 and "--axes CYX" in str(rec[0].message)
    assert img.axes == "ZYX"
    assert io.view_options(img) == {"axis": 0, "channel_axis": None, "fixed": {}, "channel": None}
    assert len(Frames(img.data, **io.view_options(img))) == n
    img = io.read_image(tmp_path / "few.tif", axes="CYX")  # the user says it is colour: no guess
    assert io.view_options(img, channel=[0, 1, 2])["channel_axis"] == 0


def test_stated_axes_and_real_rgb_are_kept_and_planar_uint8_rgb_warns(tmp_path, recwarn):
    data = np.zeros((3, 10, 12), np.uint16)
    tifffile.imwrite(tmp_path / "zyx.tif", data, metadata={"axes": "ZYX"})
    assert io.read_image(tmp_path / "zyx.tif").axes == "ZYX"
    tifffile.imwrite(tmp_path / "cyx.tif", data, metadata={"axes": "CYX"})
    assert io.read_image(tmp_path / "cyx.tif").axes == "CYX"
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((10, 12, 3), np.uint8))  # contiguous 8-bit RGB
    assert io.read_image(tmp_path / "rgb.tif").axes == "YXS"
    tifffile.imwrite(tmp_path / "grey.tif", np.zeros((10, 12, 3), np.uint16), photometric="minisblack",
                     planarconfig="contig")
    assert not [w for w in recwarn if issubclass(w.category, io.AxesWarning)]
    with pytest.warns(io.AxesWarning, match="not RGB"):  # samples of a greyscale page: slices
        assert io.read_image(tmp_path / "grey.tif").axes == "YXZ"
    tifffile.imwrite(tmp_path / "p8.tif", np.zeros((3, 10, 12), np.uint8))  # 8-bit planar: kept RGB, said
    with pytest.warns(io.AxesWarning, match="one RGB image.*--axes ZYX"):
        assert io.read_image(tmp_path / "p8.tif").axes == "SYX"


def test_zarr_without_dimension_names_is_read_as_zyx_and_says_so(tmp_path):
    zarr.create_array(tmp_path / "n.zarr", shape=(4, 10, 12), dtype="uint8", zarr_format=2)
    with pytest.warns(io.AxesWarning, match="ZYX"):
        img = io.read_image(tmp_path / "n.zarr")
    assert img.axes == "ZYX" and io.view_options(img)["axis"] == 0


def test_io_is_reachable_from_the_package_like_errors_and_models():
    # docs/cli.md writes nss.io.read_image(path); the attribute did not exist (AttributeError)
    import napari_sam_stack as nss

    assert nss.io.read_image is io.read_image and "io" in dir(nss)
