"""Microscopy files in and labels out: TIFF / OME-TIFF / OME-Zarr / zarr, with their axes.

:func:`read_image` opens an image lazily and reports its axes as the file states them
(tifffile's series axes for TIFF and OME-TIFF; the OME-Zarr ``multiscales`` axes; zarr v3
``dimension_names``); :func:`view_options` turns those axes into the ``axis`` /
``channel_axis`` / ``fixed`` arguments of :class:`~napari_sam_stack.Session`, so a ZCYX
or TZYX file is sliced along Z, not guessed from its shape.

OME-Zarr is read with zarr + dask from the ``multiscales`` metadata (full resolution,
level 0). ome-zarr-py is not used: on this stack it pins an older pydantic than napari's
and pulls in s3fs/aiobotocore, for a reader that here needs a few lines of metadata.

:func:`write_labels` writes labels as a compressed TIFF (``.tif``/``.tiff``, OME for
``.ome.tif``) or an OME-Zarr (``.zarr``), keeping the dtype (the package's labels are
uint32), atomically (a temporary file or folder renamed into place), never over an
existing file unless ``overwrite=True`` and never over (or into) one of ``protect``
(the inputs).
"""

from __future__ import annotations

import os
import shutil
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._tiff_axes import tiff_axes
from .errors import ImageError, OutputError

__all__ = ["Image", "AxesWarning", "read_image", "view_options", "write_labels", "is_image_path", "napari_write_labels"]

SPATIAL = "YX"
CHANNEL = "CS"  # C: channels, S: samples (tifffile's RGB)
TIFF_SUFFIXES = (".tif", ".tiff")


class AxesWarning(UserWarning):
    """The file does not name its axes; we chose them (the message says how, and how to override)."""


_OME_NAMES = {"t": "T", "time": "T", "c": "C", "channel": "C", "z": "Z", "y": "Y", "x": "X"}


@dataclass
class Image:
    """An opened image: ``data`` (numpy memmap/array or dask array), ``axes`` (one upper-case
    letter per dimension: T, Z, C, Y, X, S for RGB samples, Q when the file does not say and
    we could not tell; a file without axes metadata gets Z for its one further axis, with an
    :class:`AxesWarning`)."""

    data: Any
    axes: str
    path: Path
    scale: tuple | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.data.shape)

    def describe(self) -> str:
        return f"{self.path.name}: {'x'.join(map(str, self.shape))} {self.axes} {np.dtype(self.data.dtype)}"


def is_image_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` looks like an image this module reads (used to filter folders)."""
    p = Path(path)
    return p.suffix.lower() in TIFF_SUFFIXES or _zarr_kind(p) is not None


def _zarr_kind(p: Path) -> str | None:
    if not p.is_dir():
        return None
    if (p / "zarr.json").is_file():
        return "v3"
    if (p / ".zarray").is_file() or (p / ".zgroup").is_file():
        return "v2"
    return None


def read_image(path: str | os.PathLike, axes: str | None = None) -> Image:
    """Open a TIFF / OME-TIFF (memory-mapped when uncompressed, else lazily through dask),
    an OME-Zarr or a plain zarr array (lazily through dask). ``axes`` replaces the axes the
    file states (e.g. ``"TZYX"``)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ImageError(f"{p}: no such file or folder")
    if p.suffix.lower() in TIFF_SUFFIXES and p.is_file():
        img, guessed = _read_tiff(p)
    elif _zarr_kind(p) is not None:
        img, guessed = _read_zarr(p)
    else:
        raise ImageError(f"{p}: not a TIFF (.tif, .tiff) nor a zarr folder (zarr.json / .zarray inside)")
    if axes is not None:
        img.axes = normalise_axes(axes, len(img.shape))
    elif guessed:
        a = img.axes
        example = a.replace("S", "Z") if "S" in a else a.replace("Z", "C" if img.shape[a.index("Z")] in (3, 4) else "T", 1) if "Z" in a else "TZYX"[-len(a):]
        warnings.warn(f"{p.name}: {guessed}; if that is wrong, give the axes (--axes {example}, "
                      f"in Python read_image(path, axes={example!r}))", AxesWarning, stacklevel=2)
    return img


def normalise_axes(axes: str, ndim: int) -> str:
    """Upper-case, one letter per dimension, no letter twice (except Q, unknown)."""
    a = str(axes).strip().upper()
    if len(a) != ndim or not a.isalpha():
        raise ImageError(f"axes {axes!r} must be {ndim} letters, one per dimension (e.g. {'ZYX' if ndim == 3 else 'TZYX'[-ndim:] if ndim <= 4 else 'TZCYX'})")
    for letter in set(a) - {"Q"}:
        if a.count(letter) > 1:
            raise ImageError(f"axes {axes!r} name {letter} twice")
    return a


def _read_tiff(p: Path) -> tuple[Image, str | None]:
    import tifffile

    try:
        with tifffile.TiffFile(p) as tif:
            if not tif.series:
                raise ImageError(f"{p}: the TIFF holds no image")
            series = tif.series[0]
            shape = series.shape
            axes, guessed = tiff_axes(tif, series)
            contiguous = series.dataoffset is not None
    except (tifffile.TiffFileError, ValueError) as e:
        raise ImageError(f"{p}: not a readable TIFF ({e})") from None
    data = None
    if contiguous:
        try:
            data = tifffile.memmap(p, mode="r")
        except ValueError:
            data = None
    if data is None or tuple(data.shape) != tuple(shape):
        import dask.array as da
        import zarr

        store = tifffile.imread(p, aszarr=True)
        data = da.from_zarr(zarr.open_array(store, mode="r"))
    return Image(data, axes, p), guessed


def _read_zarr(p: Path) -> tuple[Image, str | None]:
    import dask.array as da
    import zarr

    try:
        node = zarr.open(str(p), mode="r")
    except Exception as e:  # zarr raises many types for damaged metadata
        raise ImageError(f"{p}: not a readable zarr store ({type(e).__name__}: {e})") from None
    scale = None
    if isinstance(node, zarr.Group):
        attrs = dict(node.attrs)
        ms = (attrs.get("ome") or {}).get("multiscales") or attrs.get("multiscales")
        if not ms:
            arrays = sorted(name for name, _ in node.arrays())
            hint = f" (it holds arrays {', '.join(arrays)}: give one, e.g. {p / arrays[0]})" if arrays else ""
            raise ImageError(f"{p}: a zarr group without OME-Zarr multiscales metadata{hint}")
        try:
            level = ms[0]["datasets"][0]
            arr = node[level["path"]]
            names = [a["name"] if isinstance(a, dict) else a for a in ms[0].get("axes", [])]
            for t in level.get("coordinateTransformations", []):
                if t.get("type") == "scale":
                    scale = tuple(float(s) for s in t["scale"])
        except (KeyError, IndexError, TypeError) as e:
            raise ImageError(f"{p}: OME-Zarr multiscales metadata is incomplete ({e})") from None
    else:
        arr, names = node, list(getattr(node.metadata, "dimension_names", None) or [])
        names = names or list(node.attrs.get("_ARRAY_DIMENSIONS", []))
    ndim, guessed = len(arr.shape), None
    if len(names) == ndim and all(isinstance(n, str) for n in names):
        axes = "".join(_OME_NAMES.get(n.lower(), "Q") for n in names)
    else:
        axes = "Q" * max(0, ndim - 2) + SPATIAL[-min(ndim, 2):]
        if ndim == 3 and arr.shape[0] > 1:
            axes = "ZYX"
        guessed = f"the array does not name its dimensions: read as {axes} (the last two as rows, columns)" if ndim > 2 else None
    return Image(da.from_zarr(arr), axes, p, scale), guessed


# ---------------------------------------------------------------------- axes -> Session arguments


def _axis_number(value, axes: str, what: str) -> int:
    """A letter of ``axes`` or a dimension number."""
    if isinstance(value, str) and not value.lstrip("-").isdigit():
        letter = value.strip().upper()
        if len(letter) != 1 or letter not in axes or letter == "Q":
            raise ImageError(f"{what} {value!r}: the image's axes are {axes}; give one of its letters or a number")
        return axes.index(letter)
    n = int(value)
    if not -len(axes) <= n < len(axes):
        raise ImageError(f"{what} {value!r}: the image has {len(axes)} dimensions ({axes}), numbered 0..{len(axes) - 1}")
    return n % len(axes)


def view_options(img: Image, *, axis: Any = "auto", channel_axis: Any = "auto", fixed: dict | None = None,
                 channel=None) -> dict:
    """``axis``, ``channel_axis``, ``fixed``, ``channel`` for :class:`~napari_sam_stack.Session`, from the axes.

    ``axis``: the slice axis (letter or number; None for one 2D image); by default the one
    non-spatial, non-channel axis longer than 1 (two such axes, e.g. T and Z, must be
    chosen: an error says how). ``channel_axis``: default C (or S, RGB samples).
    ``fixed``: ``{axis: index}`` for further axes; axes of length 1 are fixed at 0 by
    themselves. Y and X are the spatial axes (the last two others when the file does not
    name them).
    """
    axes, shape = img.axes, img.shape
    fixed = {_axis_number(k, axes, "fixed axis"): v for k, v in (fixed or {}).items()}
    if channel_axis == "auto":
        found = [i for i, a in enumerate(axes) if a in CHANNEL and i not in fixed]
        ch = found[0] if found else None
    else:
        ch = None if channel_axis is None else _axis_number(channel_axis, axes, "channel axis")
    free = [i for i in range(len(axes)) if i != ch and i not in fixed]
    named = [i for i in free if axes[i] in SPATIAL]
    spatial = named if len(named) == 2 else free[-2:]
    if len(spatial) != 2:
        raise ImageError(f"{img.path.name} (axes {axes}, shape {shape}) has no two spatial axes (Y, X) left")
    others = [i for i in free if i not in spatial]
    if axis == "auto":
        many = sorted((i for i in others if shape[i] > 1), key=lambda i: "ZTQ".find(axes[i]) % 3)
        if len(many) > 1:
            a, b = (axes[i] if axes[i] != "Q" else str(i) for i in many[:2])
            raise ImageError(
                f"{img.path.name} (axes {axes}, shape {shape}) can be sliced along {a} or {b}: choose the slice axis "
                f"and fix the other, e.g. axis={a!r}, fixed={{{b!r}: 0}} (command line: --axis {a.lower()} --fixed {b.lower()}=0)"
            )
        slice_axis = many[0] if many else None
    else:
        slice_axis = None if axis is None else _axis_number(axis, axes, "slice axis")
        if slice_axis is not None and slice_axis not in others:
            what = "the channel axis" if slice_axis == ch else "fixed" if slice_axis in fixed else "a spatial axis"
            raise ImageError(f"slice axis {slice_axis} ({axes[slice_axis]}) of {axes} is {what}")
    left = []
    for i in others:
        if i != slice_axis:
            if shape[i] == 1:
                fixed[i] = 0
            else:
                left.append(i)
    if left:
        i = left[0]
        name = axes[i] if axes[i] != "Q" else str(i)
        raise ImageError(
            f"{img.path.name} (axes {axes}, shape {shape}): axis {name} (size {shape[i]}) is neither the slice axis "
            f"nor fixed: e.g. fixed={{{name!r}: 0}} (command line: --fixed {name.lower()}=0)"
        )
    if channel is not None:
        chans = [channel] if np.ndim(channel) == 0 else list(channel)
        if ch is None:
            raise ImageError(f"{img.path.name} (axes {axes}) has no channel axis to choose a channel from")
        bad = [k for k in chans if not 0 <= int(k) < shape[ch]]
        if bad:
            raise ImageError(f"channel {bad[0]} does not exist: {img.path.name} has {shape[ch]} channel(s), "
                             f"0..{shape[ch] - 1} (axis {axes[ch]})")
    if ch is not None and channel is None:
        n, dtype = shape[ch], np.dtype(img.data.dtype)
        if n not in (1, 3) and not (n == 4 and dtype == np.uint8):
            raise ImageError(
                f"{img.path.name} has {n} channels (axis {axes[ch]}): choose one, channel=0, or up to three as "
                f"channel=[0, 1, 2] (command line: --channel 0 or --channel 0,1,2)"
            )
    return {"axis": slice_axis, "channel_axis": ch, "fixed": fixed, "channel": channel}


# ---------------------------------------------------------------------- writing labels


def _same_or_inside(a: Path, b: Path) -> bool:
    """True when ``a`` is ``b`` or inside it (resolved paths)."""
    a, b = a.resolve(), b.resolve()
    return a == b or b in a.parents


def check_output(path: str | os.PathLike, *, overwrite: bool = False, protect=()) -> Path:
    """The output path, refused (:class:`OutputError`) when it is an input, holds one, lies inside
    one, exists without ``overwrite``, or its folder does not exist. No file is touched."""
    if str(path).strip() == "":
        raise OutputError("the output path is empty")
    out = Path(path).expanduser()
    if out.suffix.lower() not in (*TIFF_SUFFIXES, ".zarr"):
        raise OutputError(f"{out}: write labels as .tif / .tiff (compressed TIFF) or .zarr (OME-Zarr)")
    for p in protect:
        p = Path(p)
        if _same_or_inside(out, p) or _same_or_inside(p, out):
            raise OutputError(f"{out}: that is the input {p}; choose another output path")
    if not out.parent.is_dir():
        raise OutputError(f"{out}: the folder {out.parent} does not exist")
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise OutputError(f"{out} exists; to replace it pass --overwrite (in Python: overwrite=True)")
        if out.suffix.lower() == ".zarr" and out.is_dir() and _zarr_kind(out) is None:
            raise OutputError(f"{out} is a folder but not a zarr store; not replacing it")
        if out.suffix.lower() != ".zarr" and not out.is_file():
            raise OutputError(f"{out} exists and is not a file; not replacing it")
    return out


def write_labels(path: str | os.PathLike, labels, *, overwrite: bool = False, protect=(), axes: str | None = None,
                 scale=None) -> Path:
    """Write integer labels (dtype kept) as a compressed TIFF or an OME-Zarr, atomically.

    ``axes`` (e.g. ``"ZYX"``, ``"TYX"``; default ``ZYX``/``YX`` by dimension) is written as
    the file's axes metadata; ``protect``: paths never written over or into (the inputs).
    """
    labels = np.asarray(labels)
    if labels.dtype.kind not in "biu" or labels.ndim < 2:
        raise OutputError(f"labels must be an integer array of 2 or more dimensions, not {labels.dtype} {labels.shape}")
    if labels.dtype == np.bool_:
        labels = labels.astype(np.uint8)
    axes = normalise_axes(axes or {2: "YX", 3: "ZYX", 4: "TZYX"}.get(labels.ndim, "Q" * labels.ndim), labels.ndim)
    out = check_output(path, overwrite=overwrite, protect=protect)
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}{out.suffix}")
    try:
        if out.suffix.lower() == ".zarr":
            _write_ome_zarr(tmp, labels, axes, scale)
        else:
            _write_tiff(tmp, labels, axes, ome=out.name.lower().endswith((".ome.tif", ".ome.tiff")))
        _replace(tmp, out)
    except BaseException:
        _remove(tmp)
        raise
    return out


def _write_tiff(tmp: Path, labels: np.ndarray, axes: str, ome: bool) -> None:
    import tifffile

    if ome and "Q" in axes:
        axes = axes.replace("Q", "T", 1).replace("Q", "C", 1)
    with open(tmp, "xb") as fh:  # x: never through an existing file or link
        tifffile.imwrite(fh, labels, compression="zlib", photometric="minisblack", metadata={"axes": axes},
                         ome=ome or None)
        fh.flush()
        os.fsync(fh.fileno())


def _write_ome_zarr(tmp: Path, labels: np.ndarray, axes: str, scale) -> None:
    import zarr

    names = {"T": ("t", "time"), "Z": ("z", "space"), "Y": ("y", "space"), "X": ("x", "space"),
             "C": ("c", "channel")}
    ax = [{"name": names[a][0], "type": names[a][1]} if a in names else {"name": f"dim_{i}"} for i, a in enumerate(axes)]
    scale = [1.0] * labels.ndim if scale is None else [float(s) for s in scale]
    group = zarr.open_group(str(tmp), mode="w-", zarr_format=3)
    chunks = tuple(1 if i < labels.ndim - 2 else min(s, 1024) for i, s in enumerate(labels.shape))
    arr = group.create_array("0", shape=labels.shape, dtype=labels.dtype, chunks=chunks, fill_value=0,
                             dimension_names=[a["name"] for a in ax])
    arr[...] = labels
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{
        "name": "labels", "axes": ax,
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}],
    }]}


def _replace(tmp: Path, out: Path) -> None:
    """Move ``tmp`` onto ``out`` atomically; a replaced folder is moved aside first, then removed."""
    if tmp.is_dir():
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
            os.rename(out, old)
        try:
            os.rename(tmp, out)
        except BaseException:
            if old is not None:
                os.rename(old, out)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def _remove(p: Path) -> None:
    if p.is_dir():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def napari_write_labels(path: str, data: Any, meta: dict) -> list[str]:
    """npe2 writer for a Labels layer (``.tif``/``.tiff``/``.zarr``): compressed, dtype kept, atomic.

    napari's Save dialog has already asked before replacing a file, so an existing file is replaced.
    """
    scale = meta.get("scale") if isinstance(meta, dict) else None
    return [str(write_labels(path, np.asarray(data), overwrite=True, scale=scale))]
