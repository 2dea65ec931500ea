"""Saving, opening and autosaving an Annotation: the methods (a mixin) and the autosave folders.

Autosaves are projects (see :mod:`napari_sam_stack.project`) under
``<user cache>/autosave/<image key>/snap-<n>``, the key a hash of the image's signature,
``n`` growing. Each new one is renamed into place before the annotation's previous one is
removed (so one complete autosave always exists), and label slices unchanged since that
previous one are hard-linked from it: an autosave after a commit costs about the slices
that commit changed. An annotation removes only its own autosaves (another annotation of
the same image keeps its own); an annotation opened from an autosave continues it; a
successful :meth:`save` removes the annotation's autosave (the project holds the work).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import warnings
from pathlib import Path

from .errors import ProjectError
from .project import _TMP, PARTIAL, _read_meta, _write_atomic, image_signature, is_project, open_project, save


class Persistence:
    """``save`` / ``open`` / autosave methods of :class:`~napari_sam_stack.Annotation`."""

    def save(self, path, overwrite: bool = False):
        """Save the project folder (see :mod:`napari_sam_stack.project`); its autosave is then removed."""
        path = save(self, path, overwrite=overwrite)
        if self._autosaved_to is not None and is_project(self._autosaved_to):
            shutil.rmtree(self._autosaved_to, ignore_errors=True)
        self._autosaved_to, self._dirty_slices, self._changed = None, None, False
        return path

    @classmethod
    def open(cls, path, image=None, model=None, **kw):
        """Open a saved project (see :func:`napari_sam_stack.project.open_project`)."""
        return open_project(path, image=image, model=model, **kw)

    @property
    def autosave_path(self):
        """This image's autosave folder under the user cache."""
        return autosave_dir(self.session)

    @staticmethod
    def find_autosave(image, axis=0, **frames_options):
        """The latest autosave of this image (path), or None."""
        return find_autosave(image, axis, **frames_options)

    def maybe_autosave(self, force: bool = False):
        """Autosave when something changed and ``autosave_every`` seconds passed (or ``force``);
        returns the path written or None. Call it from a timer; no thread runs in the core."""
        due = time.monotonic() - self._last_autosave >= self.autosave_every
        if not self.autosave or not self._changed or not (due or force):
            return None
        return autosave(self)

    def discard_autosave(self) -> None:
        """Remove this image's autosaves (e.g. once the project is saved where the user wants it)."""
        discard_autosave(self.session)

    def _autosave_after_change(self) -> None:
        self.maybe_autosave(force=True)


def _key(signature: dict) -> str:
    return hashlib.sha256(json.dumps(signature, sort_keys=True).encode()).hexdigest()[:24]


def autosave_root() -> Path:
    from .models import cache_root

    return cache_root() / "autosave"


def autosave_dir(session) -> Path:
    """The folder holding the autosaves of this session's image."""
    return autosave_root() / _key(image_signature(session))


def _snapshots(folder: Path) -> list[Path]:
    try:
        snaps = [p for p in folder.iterdir() if p.name.startswith("snap-") and p.name[5:].isdigit()]
    except OSError:
        return []
    return sorted(snaps, key=lambda p: int(p.name[5:]))


def autosave(a) -> Path | None:
    """Write an autosave of ``a`` now (atomically); returns its path, or None (warned) when
    it cannot be written — an autosave failing never stops the work."""
    folder = autosave_dir(a.session)
    snaps = _snapshots(folder)
    previous = a._autosaved_to if a._autosaved_to is not None and is_project(a._autosaved_to) else None
    seq = int(snaps[-1].name[5:]) + 1 if snaps else 1
    target = folder / f"snap-{seq:06d}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _write_atomic(a, target, autosave=True, previous=previous, dirty=a._dirty_slices)
    except (ProjectError, OSError) as e:
        warnings.warn(f"autosave failed: {e}", RuntimeWarning, stacklevel=3)
        return None
    if previous is not None:  # this annotation's own previous autosave (others' stay: other work on the image)
        shutil.rmtree(previous, ignore_errors=True)
    _remove_debris(folder)
    a._autosaved_to = target
    a._dirty_slices = set()
    a._changed = False
    a._last_autosave = time.monotonic()
    return target


def _remove_debris(folder: Path, age: float = 600.0) -> None:
    """Remove autosaves interrupted (killed) over ``age`` seconds ago; only folders marked as ours."""
    for d in folder.glob(_TMP + "*"):
        try:
            ours = (d / PARTIAL).is_file() or is_project(d)
            if ours and time.time() - d.stat().st_mtime > age:
                shutil.rmtree(d, ignore_errors=True)
        except OSError:
            pass


def find_autosave(image, axis=0, **frames_options) -> Path | None:
    """The latest autosave of ``image`` (viewed with ``axis`` and Frames options), or None."""
    from .normalise import Frames

    sig = json.loads(json.dumps(Frames(image, axis, **frames_options).signature()))
    for snap in reversed(_snapshots(autosave_root() / _key(sig))):
        if _read_meta(snap, strict=False) is not None:
            return snap
    return None


def discard_autosave(session) -> None:
    """Remove this image's autosaves (only folders carrying our marker)."""
    folder = autosave_dir(session)
    for snap in _snapshots(folder):
        if is_project(snap):
            shutil.rmtree(snap, ignore_errors=True)
    try:
        folder.rmdir()
    except OSError:
        pass
