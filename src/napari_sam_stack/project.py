"""Project folders: save / open an :class:`~napari_sam_stack.Annotation`, and its autosaves.

A project is a folder (suggested suffix ``.sam``)::

    napari-sam-stack-project.json   marker + metadata: format version, image signature and
                                    source, model identity, session settings, every object
                                    (prompts, candidates, status), digests of the files below
    arrays.npz                      prompt masks, conditioning masks and result masks
                                    (numpy npz, read with allow_pickle=False)
    labels.zarr/                    the committed labels, (N, Y, X), one zstd chunk per slice

Nothing is ever unpickled; JSON holds everything else. Writes are atomic: the project is
built in a temporary folder beside the target and renamed into place. An existing path is
replaced only when it is a napari-sam-stack project AND either ``overwrite=True`` or it
is the annotation's own project (the one it was opened from or last saved to); anything
else (a file, a folder without our marker) is never replaced. Opening checks the
format version, the digests (a damaged or truncated project is refused), the image (its
signature: a changed image is refused, saying what changed) and the model, and never
writes anything.

Autosaves are projects too (see :mod:`napari_sam_stack._persist`).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
import warnings
from pathlib import Path

import numpy as np

from ._project_io import read_objects, read_project_files, write_arrays, write_labels
from ._validate import flag
from .errors import OtherModelError, OtherProjectError, ProjectError

FORMAT = 1
KIND = "napari-sam-stack project"
MARKER = "napari-sam-stack-project.json"
_TMP = ".tmp-"
PARTIAL = ".napari-sam-stack-partial"


# ---------------------------------------------------------------- save


def is_project(path) -> bool:
    """True when ``path`` is a folder carrying our marker (readable, of our kind)."""
    try:
        meta = json.loads((Path(path) / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("kind") == KIND


def save(annotation, path, overwrite: bool = False) -> Path:
    """Write ``annotation`` as a project folder at ``path`` (see the module doc for the rules)."""
    overwrite = flag(overwrite, "overwrite", error=ProjectError)
    path = _path(path)
    if path.exists() or path.is_symlink():
        if not is_project(path):
            raise ProjectError(f"{path} exists and is not a napari-sam-stack project: it is never replaced; choose another path")
        own = annotation.project_path is not None and _same(path, annotation.project_path)
        if not (overwrite or own):
            raise OtherProjectError(f"{path} is another project: it is replaced only when you say so (Python: overwrite=True; "
                              "the widget asks)")
    if not path.parent.is_dir():
        raise ProjectError(f"cannot save to {path}: folder {path.parent} does not exist")
    _write_atomic(annotation, path, autosave=False)
    annotation.project_path = path
    return path


def _path(path) -> Path:
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise ProjectError(f"a project path must be a non-empty str or path, got {path!r}")
    return Path(path).expanduser()


def _same(a: Path, b) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _write_atomic(annotation, path: Path, autosave: bool, previous: Path | None = None, dirty=None) -> dict:
    tmp = path.parent / f"{_TMP}{path.name}-{uuid.uuid4().hex[:8]}"
    try:
        meta = _write(annotation, tmp, autosave, previous, dirty)
        if path.exists():
            old = path.parent / f"{_TMP}{path.name}-old-{uuid.uuid4().hex[:8]}"
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ProjectError(f"could not save the project to {path}: {e}") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def _write(a, folder: Path, autosave: bool, previous: Path | None, dirty) -> dict:
    from . import __version__

    folder.mkdir()
    (folder / PARTIAL).write_text("a napari-sam-stack project being written")  # ours, even if never finished
    s = a.session
    reuse = None
    if previous is not None and dirty is not None:
        prev = _read_meta(previous, strict=False)
        if prev and prev.get("labels", {}).get("shape") == list(a.labels.shape) and \
                prev["labels"].get("dtype") == str(a.labels.dtype):
            reuse = (previous, prev["labels"]["slices"], set(dirty))
    slice_digests = write_labels(folder / "labels.zarr", a.labels, reuse)
    objects, arrays = _objects_json(a)
    arrays_digest = write_arrays(folder / "arrays.npz", arrays)
    meta = {
        "kind": KIND,
        "format": FORMAT,
        "package": __version__,
        "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "autosave": bool(autosave),
        "project": None if a.project_path is None else str(a.project_path),
        "image": {"signature": image_signature(s), "source": a.source, "shape": list(s.shape)},
        "model": {"name": s.model.name, "identity": s.model.identity, "family": s.model.family},
        "session": session_settings(s),
        "labels": {"shape": list(a.labels.shape), "dtype": str(a.labels.dtype), "slices": slice_digests},
        "arrays": arrays_digest,
        "next_id": int(a._top_id),
        "objects": objects,
    }
    (folder / MARKER).write_text(json.dumps(meta, indent=1))
    (folder / PARTIAL).unlink()
    return meta


def image_signature(session) -> dict:
    """The image's :meth:`Frames.signature`, computed once per session."""
    sig = (session.embeddings.signature or {}).get("frames")
    if sig is None:
        sig = getattr(session, "_project_signature", None)
        if sig is None:
            sig = json.loads(json.dumps(session.frames.signature()))
            session._project_signature = sig
    return sig


def session_settings(session) -> dict:
    f, e = session.frames, session.embeddings
    limits = None if f.contrast_limits is None else np.stack(f.contrast_limits, 1).tolist()
    return {"axis": f.axis, "fixed": {str(k): v for k, v in f.fixed.items()}, "channel_axis": f.channel_axis,
            "channel": f.channels, "contrast_limits": limits, "sam2_resize": e.sam2_resize, "dtype": e.dtype,
            "in_memory": e.in_memory, "lru_slices": e.lru_slices}


def _objects_json(a) -> tuple[list, dict]:
    arrays: dict[str, np.ndarray] = {}
    out = []
    for obj in a.objects.values():
        prompts, cond = {}, {}
        for i, p in sorted(obj.prompts.items()):
            d = {"points": None if p.points is None else p.points[:, ::-1].tolist(),
                 "point_labels": None if p.labels is None else p.labels.tolist(),
                 "box": None if p.box is None else p.box[[1, 0, 3, 2]].tolist(), "mask": None}
            if p.mask is not None:
                d["mask"] = key = f"o{obj.id}_prompt{i}"
                arrays[key] = p.mask
            prompts[str(i)] = d
        for i, c in sorted(obj.conditioning.items()):
            p = obj.prompts.get(i)
            if c is p:
                cond[str(i)] = "prompt"
            elif c.mask is None:
                cond[str(i)] = "clicks"
            else:
                cond[str(i)] = key = f"o{obj.id}_cond{i}"
                arrays[key] = c.mask
        for k, v in obj.masks.to_arrays().items():
            arrays[f"o{obj.id}_masks_{k}"] = v
        out.append({"id": obj.id, "status": obj.status, "committed": obj.committed, "propagated": obj.propagated,
                    "prompts": prompts, "candidate": {str(i): k for i, k in sorted(obj.candidate.items())},
                    "conditioning": cond})
    return out, arrays


# ---------------------------------------------------------------- open


def _read_meta(path: Path, strict: bool = True) -> dict | None:
    """The project's metadata, checked for kind and format; ProjectError (None unless ``strict``)."""
    try:
        return _parse_meta(path)
    except ProjectError:
        if strict:
            raise
        return None


def _parse_meta(path: Path) -> dict:
    marker = path / MARKER
    try:
        text = marker.read_text()
    except FileNotFoundError:
        if not path.exists():
            raise ProjectError(f"no project at {path}") from None
        raise ProjectError(f"{path} is not a napari-sam-stack project (no {MARKER})") from None
    except OSError as e:
        raise ProjectError(f"cannot read the project {path}: {e}") from e
    try:
        meta = json.loads(text)
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except ValueError as e:
        raise ProjectError(f"project {path} is damaged: {MARKER} is not valid JSON ({e})") from e
    if meta.get("kind") != KIND:
        raise ProjectError(f"{path} is not a napari-sam-stack project ({MARKER} is of another kind)")
    fmt = meta.get("format")
    if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt < 1:
        raise ProjectError(f"project {path} is damaged: format version {fmt!r}")
    if fmt > FORMAT:
        raise ProjectError(f"project {path} was saved by a newer napari-sam-stack (format {fmt}; this version reads "
                           f"up to {FORMAT}): update the package to open it")
    return meta


def saved_summary(path) -> dict:
    """What a saved project says without opening it (no image read, no model loaded): ``model``,
    the registry name of its model (or the name of a local one), and ``top_id``, the highest object
    id it has used. A missing, damaged or foreign project is a :class:`ProjectError`."""
    meta = _read_meta(_path(path))
    try:
        ids = [int(o["id"]) for o in meta.get("objects", [])]
        return {"model": (meta.get("model") or {}).get("name"), "top_id": max([int(meta.get("next_id") or 0), *ids])}
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ProjectError(f"project {path} is damaged: {type(e).__name__}: {e}") from e


def open_project(path, image=None, model=None, *, allow_model_change: bool = False, **session_options):
    """Open a project folder as an :class:`~napari_sam_stack.Annotation`.

    ``image``: the image (default: read from the stored source path with tifffile);
    refused with a :class:`ProjectError` when it differs from the saved one (the message
    says what changed). ``model``: default the stored registry model; a local checkpoint
    must be passed again (``load_model(checkpoint=...)``). Another model than the saved
    one is refused, unless ``allow_model_change=True`` (then a warning: masks and labels
    are kept, new predictions use the new model). ``session_options`` override the saved
    session settings that do not change the frames (``cache_dir``, ``in_memory``,
    ``lru_slices``, ``dtype``). A damaged, truncated or foreign project is a
    :class:`ProjectError`; nothing is written.
    """
    from .annotation import Annotation
    from .models import LoadedModel, available_models, load_model
    from .session import Session

    allow_model_change = flag(allow_model_change, "allow_model_change", error=ProjectError)
    path = _path(path)
    meta = _read_meta(path)
    try:
        labels, arrays = read_project_files(path, meta)
        info, settings, mod = meta["image"], dict(meta["session"]), meta["model"]
        if image is None:
            image = _read_source(info.get("source"))
        kw = {"fixed": {int(k): int(v) for k, v in (settings.get("fixed") or {}).items()},
              "channel_axis": settings["channel_axis"], "channel": settings["channel"],
              "contrast_limits": settings["contrast_limits"], "sam2_resize": settings["sam2_resize"],
              "dtype": settings["dtype"], "in_memory": settings["in_memory"], "lru_slices": settings["lru_slices"]}
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        if isinstance(e, ProjectError):
            raise
        raise ProjectError(f"project {path} is damaged: {type(e).__name__}: {e}") from e
    bad = set(session_options) - {"cache_dir", "in_memory", "lru_slices", "dtype"}
    if bad:
        raise ProjectError(f"open() cannot change {sorted(bad)}: they define the frames the project was made on")
    kw.update(session_options)
    if model is None:
        name = mod.get("name")
        if name not in available_models() or not str(mod.get("identity", "")).startswith(f"{name}:"):
            raise ProjectError(f"this project was made with the model {name!r} (a local checkpoint or module): pass it, "
                               "e.g. Annotation.open(path, model=load_model(checkpoint=...))")
        model = name
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    if loaded.identity != mod.get("identity"):
        msg = f"this project was made with the model {mod.get('name')!r}, not {loaded.name!r} (weights differ)"
        if not allow_model_change:
            raise OtherModelError(msg + ": load that model (Python: model=...), or continue with this one (Python: "
                               "allow_model_change=True; the widget asks)")
        warnings.warn(msg + ": continuing with the new model (saved masks and labels are kept)", stacklevel=3)
    saved_shape = (info.get("signature") or {}).get("shape")
    if saved_shape is not None and len(saved_shape) != np.ndim(image):  # another image: its view cannot even be made
        raise ProjectError(f"this is not the project's image: it was made on an image of shape {tuple(saved_shape)}, "
                           f"this one is {tuple(np.shape(image))}")
    try:
        session = Session(image, loaded, settings["axis"], **kw)
    except Exception as e:
        raise ProjectError(f"the image does not fit the project: {e}") from e
    _check_image(info["signature"], image_signature(session))
    if labels.shape != session.shape:
        raise ProjectError(f"project {path} is damaged: labels {labels.shape} but the image gives {session.shape}")
    a = Annotation(session, None, labels=labels)
    a.source = info.get("source")
    try:
        objects = read_objects(meta["objects"], arrays, session, a.labels.dtype)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ProjectError(f"project {path} is damaged: {type(e).__name__}: {e}") from e
    for obj in objects:
        a.objects[obj.id] = obj
        a._attach(obj)
    a._top_id = max([int(meta.get("next_id", 0)), a._top_id, *a.objects])
    a.project_path = None if meta.get("autosave") else path
    if meta.get("autosave"):  # continue that autosave: the next one replaces it, linking unchanged slices
        a.project_path = Path(meta["project"]) if meta.get("project") and is_project(meta["project"]) else None
        a._autosaved_to, a._dirty_slices = path, set()
    a._changed = False
    return a


def latest_autosave(annotation, project=None) -> Path | None:
    """The newest autosave of ``annotation``'s image (its ``autosave_path``), or None. ``project``: only
    an autosave that continues that project folder (the work on it after it was opened), written after it
    was last saved; an autosave of other work on the same image is never offered as its continuation."""
    folder = Path(annotation.autosave_path)
    try:
        snaps = [p for p in folder.iterdir() if p.name.startswith("snap-") and p.name[5:].isdigit()]
    except OSError:
        return None
    for snap in sorted(snaps, key=lambda p: int(p.name[5:]), reverse=True):
        meta = _read_meta(snap, strict=False)
        if meta is None:
            continue
        if project is None:
            return snap
        if meta.get("project") and _same(Path(meta["project"]), project) and _newer(snap, Path(project)):
            return snap
    return None


def _newer(a: Path, b: Path) -> bool:
    try:
        return (a / MARKER).stat().st_mtime > (b / MARKER).stat().st_mtime
    except OSError:
        return False


def _read_source(source):
    if not source:
        raise ProjectError("the project does not know where its image is (it was made from an array): give the image "
                       "(Python: image=...; command line: napari-sam-stack segment IMAGE --project ...)")
    return read_image(source)


def read_image(path):
    """A TIFF file as a numpy array (ProjectError when it cannot be read)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ProjectError(f"the image {p} is not there: pass image=... (an array)")
    import tifffile

    try:
        return tifffile.imread(p)
    except Exception as e:
        raise ProjectError(f"cannot read the image {p} as TIFF ({e}): pass image=... (an array)") from e


def _check_image(saved: dict, now: dict) -> None:
    if saved == now:
        return
    names = {"shape": "shape", "dtype": "dtype", "axis": "slice axis", "fixed": "fixed axes",
             "channel_axis": "channel axis", "channels": "channels", "contrast_limits": "contrast limits"}
    for key, name in names.items():
        if saved.get(key) != now.get(key):
            raise ProjectError(f"the image changed since the project was saved: {name} {saved.get(key)} -> {now.get(key)}")
    raise ProjectError("the image changed since the project was saved: same shape and dtype, but its pixels differ")


__all__ = ["FORMAT", "is_project", "latest_autosave", "open_project", "read_image", "save"]
