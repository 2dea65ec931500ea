"""The files of a project folder (see :mod:`napari_sam_stack.project`): labels zarr, arrays npz, objects."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
from pathlib import Path

import numpy as np

from ._masks import MaskStack
from ._objects import AnnotatedObject, Status
from .errors import ProjectError
from .prompts import Prompt, make_prompt


def _digest(data) -> str:
    return hashlib.sha256(memoryview(np.ascontiguousarray(data)).cast("B")).hexdigest()


def write_labels(path: Path, labels: np.ndarray, reuse=None) -> list[str]:
    """Write (N, Y, X) labels as a zarr array, one compressed chunk per slice; returns the
    per-slice SHA-256 digests. ``reuse = (previous project, its digests, dirty slices)``:
    slices not dirty are hard-linked (copied where links fail) from the previous project."""
    import zarr
    from zarr.codecs import Crc32cCodec, ZstdCodec

    # chunk files side by side (c.<z>.0.0): no folder per slice, quick to link and to remove
    arr = zarr.create_array(store=str(path), shape=labels.shape, chunks=(1, *labels.shape[1:]), dtype=labels.dtype,
                            compressors=[ZstdCodec(level=3), Crc32cCodec()], fill_value=0, zarr_format=3,
                            chunk_key_encoding={"name": "default", "separator": "."})
    digests = []
    for z in range(labels.shape[0]):
        if reuse is not None and z not in reuse[2] and z < len(reuse[1]):
            key = arr.metadata.encode_chunk_key((z,) + (0,) * (labels.ndim - 1))
            src, dst = reuse[0] / "labels.zarr" / key, path / key
            if src.is_file():
                dst.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(src, dst)
                except OSError:
                    shutil.copyfile(src, dst)
            digests.append(reuse[1][z])  # (no chunk: an all-zero slice)
            continue
        arr[z] = labels[z]
        digests.append(_digest(labels[z]))
    return digests


def write_arrays(path: Path, arrays: dict[str, np.ndarray]) -> str:
    """Write ``arrays`` as an npz (no object arrays; not compressed: masks are crops already, and
    writing them stays cheap enough to autosave after every commit); returns its SHA-256."""
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    data = buf.getvalue()
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def read_project_files(path: Path, meta: dict) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Labels and arrays of a project, checked against the digests in its metadata."""
    import zarr

    try:
        data = (path / "arrays.npz").read_bytes()
    except OSError as e:
        raise ProjectError(f"project {path} is damaged: arrays.npz cannot be read ({e})") from e
    if hashlib.sha256(data).hexdigest() != meta["arrays"]:
        raise ProjectError(f"project {path} is damaged: arrays.npz does not match its digest (truncated or changed)")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as e:
        raise ProjectError(f"project {path} is damaged: arrays.npz cannot be read ({e})") from e
    info = meta["labels"]
    try:
        arr = zarr.open_array(str(path / "labels.zarr"), mode="r")
        if list(arr.shape) != list(info["shape"]) or str(arr.dtype) != info["dtype"] or arr.ndim != 3:
            raise ValueError(f"labels are {arr.shape} {arr.dtype}, the metadata says {info['shape']} {info['dtype']}")
        labels = np.asarray(arr[...])
    except Exception as e:
        raise ProjectError(f"project {path} is damaged: labels.zarr cannot be read ({type(e).__name__}: {e})") from e
    digests = info["slices"]
    if len(digests) != labels.shape[0]:
        raise ProjectError(f"project {path} is damaged: {len(digests)} slice digests for {labels.shape[0]} slices")
    for z, d in enumerate(digests):
        if _digest(labels[z]) != d:
            raise ProjectError(f"project {path} is damaged: labels slice {z} does not match its digest (truncated or changed)")
    return np.ascontiguousarray(labels), arrays


def read_objects(entries: list, arrays: dict[str, np.ndarray], session, dtype) -> list[AnnotatedObject]:
    """The objects of a project's metadata (ValueError/KeyError/TypeError when they are inconsistent)."""
    shape = session.frames.frame_shape
    n = len(session)
    out, seen = [], set()
    for e in entries:
        o = e["id"]
        if not isinstance(o, int) or isinstance(o, bool) or not 1 <= o <= np.iinfo(dtype).max or o in seen:
            raise ValueError(f"bad object id {o!r}")
        seen.add(o)
        if e["status"] not in Status.ALL:
            raise ValueError(f"object {o}: unknown status {e['status']!r}")
        stack = MaskStack.from_arrays(shape, {k: arrays[f"o{o}_masks_{k}"] for k in ("index", "box", "data")}, n)
        obj = AnnotatedObject(o, stack, status=e["status"], committed=bool(e["committed"]),
                              propagated=bool(e["propagated"]))
        for key, d in e["prompts"].items():
            i = _slice(key, n)
            mask = None if d["mask"] is None else arrays[d["mask"]]
            if mask is not None and mask.dtype == bool and mask.shape != shape:
                raise ValueError(f"object {o}: prompt mask of slice {i} has shape {mask.shape}")
            try:
                obj.prompts[i] = make_prompt(shape, d["points"], d["point_labels"], d["box"], mask)
            except Exception as err:
                raise ValueError(f"object {o}, slice {i}: {err}") from err
        for key, k in e["candidate"].items():
            i = _slice(key, n)
            if i not in obj.prompts or not isinstance(k, int) or not 0 <= k < 3:
                raise ValueError(f"object {o}: bad candidate {k!r} on slice {i}")
            obj.candidate[i] = k
        for key, c in e["conditioning"].items():
            i = _slice(key, n)
            p = obj.prompts[i]
            if c == "prompt":
                obj.conditioning[i] = p
            elif c == "clicks":
                obj.conditioning[i] = Prompt(p.points, p.labels, p.box)
            else:
                m = arrays[c]
                if m.dtype != bool or m.shape != shape or not m.any():
                    raise ValueError(f"object {o}: conditioning mask of slice {i} is not a mask of the slice")
                obj.conditioning[i] = Prompt(mask=m)
        out.append(obj)
    return out


def _slice(key: str, n: int) -> int:
    i = int(key)
    if not 0 <= i < n:
        raise ValueError(f"slice {i} outside 0..{n - 1}")
    return i
