"""The on-disk embeddings cache: one zarr (v3) group per signature, one chunk per slice.

Layout of ``<root>/<key>/`` (``key`` = hash of the signature, so a different image,
model, preprocessing, storage dtype or package version never shares a folder)::

    .napari-sam-stack-cache   ownership marker (our format id): only folders carrying it are
                              ever deleted (:func:`is_ours`)
    zarr.json            group; attrs: the full signature, the slice layout and the SHA-256
                         of every shared array
    fpn_0 .. fpn_k/      SAM 2: (N, C, H, W) per FPN level; SAM 1: ``features``
    pos_0 .. pos_k/      SAM 2 positional encodings, (C, H, W), stored once
    done/<i>             written after slice i's chunks: the slice is complete; holds
                         the SHA-256 of the slice's raw pixels it was encoded from

Crash safety: the group (marker, metadata, shared arrays and their checksums) is built in
a temporary folder and renamed into place; zarr writes each chunk to a temporary file and
renames it; a slice counts as computed only once its ``done/<i>`` marker exists, and the
marker is written after its chunks. A process killed at any moment therefore leaves
complete slices and slices without a marker, which are recomputed. Chunks carry a CRC32C
checksum and the shared arrays a SHA-256: damage is reported with a
:class:`CorruptCacheWarning` and what is damaged recomputed. A cache that cannot be read,
repaired or written (read-only, a file in the way, a folder that is not ours) is left
alone: :class:`SliceCache` says so (:attr:`SliceCache.unusable`) and the store carries on in
memory. Deleting (a damaged group, :func:`~._cache_admin.clear_cache`) renames the folder
away first and removes its marker last, so an interrupted delete leaves marked debris.

The folder is chosen by a cheap sampled signature; each slice's marker holds
:func:`pixel_digest` of the exact pixels it was encoded from, which the store
compares with the image's current pixels whenever it reads the slice from disk
(:class:`StaleCacheWarning` and a recomputation when they differ).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CacheError

FORMAT = 3  # 2: done markers hold the slice's pixel digest; 3: ownership marker, checksummed shared arrays
MARKER = ".napari-sam-stack-cache"
_MARKER_ID = "napari-sam-stack embeddings cache"
_TMP_PREFIX = ".tmp-"
_KEY = re.compile(r"[0-9a-f]{24}")


class CorruptCacheWarning(RuntimeWarning):
    """A cached slice could not be read back intact; it is recomputed."""


class StaleCacheWarning(CorruptCacheWarning):
    """A cached slice was encoded from other pixels than the image has now; it is recomputed."""


def pixel_digest(raw: np.ndarray) -> str:
    """SHA-256 of an array (dtype, shape and bytes): a slice's raw pixels as recorded in its
    done marker, and each shared array as recorded in the group's attributes."""
    a = np.ascontiguousarray(raw)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(memoryview(a.reshape(-1).view(np.uint8)))
    return h.hexdigest()


def default_root() -> Path:
    """``models.cache_root() / "embeddings"`` (``$NAPARI_SAM_STACK_CACHE`` moves it)."""
    from .models import cache_root

    return cache_root() / "embeddings"


def resolve_root(cache_dir) -> Path:
    """``cache_dir`` as a folder path (None: :func:`default_root`); CacheError for ``""`` or a non-path."""
    if cache_dir is None:
        return default_root()
    if not isinstance(cache_dir, (str, os.PathLike)):
        raise CacheError(f"cache_dir must be a folder path (str or Path) or None, got {type(cache_dir).__name__}")
    text = os.fspath(cache_dir)
    if isinstance(text, bytes) or not text.strip():
        raise CacheError(
            f"cache_dir={cache_dir!r} names no folder (an empty path would mean the working directory): "
            "pass a folder path, or None for the per-user cache"
        )
    return Path(text).expanduser()


def cache_signature(frames, model, sam2_resize: str, dtype: str) -> dict[str, Any]:
    """What keys a stack's cache folder: format, package version, the frames' sampled signature,
    model identity, preprocessing and storage dtype (as JSON round-trips it, like the zarr attrs)."""
    from . import __version__

    if not hasattr(frames, "signature"):
        raise CacheError("an on-disk cache needs frames with a signature() (a Frames); pass in_memory=True otherwise")
    sig = {
        "format": FORMAT,
        "package": __version__,
        "frames": frames.signature(),
        "model": model.identity,
        "family": model.family,
        "image_size": model.image_size,
        "preprocess": sam2_resize if model.family == "sam2" else "resize-longest-side",
        "dtype": dtype,
    }
    return json.loads(json.dumps(sig))


def signature_key(signature: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(signature, sort_keys=True).encode()).hexdigest()[:24]


# ---------------------------------------------------------------- ownership


def is_ours(path: Path) -> bool:
    """True when ``path`` is a cache folder this package made: it carries our marker file, or
    (caches of format 2, made before the marker) a zarr.json whose attributes hold our signature."""
    try:
        if path.is_symlink() or not path.is_dir():
            return False
        marker = path / MARKER
        if marker.is_file() and not marker.is_symlink():
            with open(marker, encoding="utf-8", errors="replace") as f:
                return f.read(200).startswith(_MARKER_ID)
        meta = json.loads((path / "zarr.json").read_text())
        attrs = meta.get("attributes", {})
        return (meta.get("node_type") == "group" and isinstance(attrs.get("signature", {}).get("format"), int)
                and isinstance(attrs.get("levels"), list))
    except (OSError, ValueError, AttributeError):
        return False


def _write_marker(folder: Path) -> None:
    (folder / MARKER).write_text(f"{_MARKER_ID}, format {FORMAT}\n", encoding="utf-8")


def delete_ours(path: Path) -> bool:
    """Delete one of our folders (never anything else); True when it is gone.

    The folder is first renamed to a temporary name (readers never see it half deleted), then
    emptied with its marker removed last: an interrupted delete leaves debris that is still
    recognisably ours. On a read-only cache nothing is deleted and False is returned.
    """
    if not is_ours(path):
        return False
    target = path
    if not path.name.startswith(_TMP_PREFIX):
        target = path.with_name(f"{_TMP_PREFIX}del-{path.name}-{uuid.uuid4().hex[:8]}")
        try:
            if not (path / MARKER).is_file():
                _write_marker(path)  # (format 2) so that its debris stays recognisable
            os.rename(path, target)
        except OSError:
            return False
    try:
        for child in target.iterdir():
            if child.name == MARKER:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
        (target / MARKER).unlink(missing_ok=True)
        target.rmdir()
    except OSError:
        pass
    return not target.exists()


# ---------------------------------------------------------------- one stack


class SliceCache:
    """Reads and writes per-slice arrays of one signature under ``root/<key>``.

    Thread-safe for concurrent reads and writes of different slices; the caller
    serialises writes (and :meth:`create`). ``unusable`` is None, or why this cache cannot
    be used (the store then works in memory).
    """

    def __init__(self, root: str | os.PathLike | None, signature: dict[str, Any], n_slices: int):
        self.signature = signature
        self.n = int(n_slices)
        self.root = resolve_root(root)
        self.path = self.root / signature_key(signature)
        self._group = None
        self._arrays: dict[str, Any] = {}
        self._bad: set[int] = set()  # slices found damaged or stale whose marker could not be removed
        self.unusable: str | None = None
        self.shared_damaged = False
        if self.root.exists() and not self.root.is_dir():
            self.unusable = f"cache_dir {self.root} is a file, not a folder"
        elif (self.path.exists() or self.path.is_symlink()) and not is_ours(self.path) and not (self.path / "zarr.json").exists():
            self.unusable = f"{self.path} exists and is not a napari-sam-stack cache (no {MARKER}); it is left alone"

    # ------------------------------------------------------------------ open / create
    def open(self) -> bool:
        """Open the group when it exists; a damaged one of ours is removed. True when open."""
        if self.unusable is not None:
            return False
        if not (self.path / "zarr.json").exists():  # never created, or cleared meanwhile
            self._group = None
            return False
        if self._group is not None:
            return True
        import zarr

        try:
            group = zarr.open_group(self.path, mode="r+")
            attrs = dict(group.attrs)
            ok = attrs.get("signature") == self.signature
            # every array's metadata is read now: damage there is found once, not on every slice
            arrays = {name: group[name] for name in [*attrs["levels"], *attrs["shared"]]} if ok else {}
            problem = "it does not match its signature"
        except Exception as e:  # unreadable or truncated metadata (zarr raises many types)
            ok, problem = False, f"its metadata cannot be read ({type(e).__name__}: {e})"
        if not ok:
            if delete_ours(self.path):
                warnings.warn(f"embeddings cache {self.path}: {problem}; recomputing it", CorruptCacheWarning, stacklevel=3)
            else:
                self.unusable = f"embeddings cache {self.path}: {problem}, and it cannot be removed (read-only or not ours)"
            return False
        self._group, self._arrays = group, arrays
        try:
            os.utime(self.path)  # "last used", for clear_cache(older_than_days=...)
        except OSError:
            pass
        return True

    def create(self, levels: dict[str, tuple[tuple[int, ...], str]], shared: dict[str, np.ndarray], attrs: dict) -> None:
        """Build the group in a temporary folder, then rename it into place (atomic).

        ``levels``: name -> (per-slice shape, dtype); ``shared``: arrays stored once (with their
        SHA-256). If another process got there first, its group is used. OSError when the cache
        cannot be created.
        """
        if self.open():
            return
        if self.unusable is not None:
            raise OSError(self.unusable)
        import zarr
        from zarr.codecs import Crc32cCodec

        if self.path.exists() or self.path.is_symlink():
            # Another process may have renamed its complete group into place since the open()
            # above: use it. Only a folder that still does not open (incomplete, or not a
            # group) is replaced, so a concurrent creator's fresh cache is never deleted.
            if self.open():
                return
            if self.unusable is not None:
                raise OSError(self.unusable)
            if not delete_ours(self.path):
                raise OSError(f"{self.path} exists and is not a napari-sam-stack cache (no {MARKER}): it was left alone")
        self.root.mkdir(parents=True, exist_ok=True)
        for old in self.root.glob(_TMP_PREFIX + "*"):  # debris of creations killed long ago
            try:
                if time.time() - old.stat().st_mtime > 86400:
                    delete_ours(old)
            except OSError:
                pass
        tmp = self.root / f"{_TMP_PREFIX}{self.path.name}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        _write_marker(tmp)
        group = zarr.open_group(tmp, mode="a", zarr_format=3)
        for name, (shape, dtype) in levels.items():
            group.create_array(name, shape=(self.n, *shape), chunks=(1, *shape), dtype=dtype,
                               compressors=[Crc32cCodec()], fill_value=np.nan)
        for name, arr in shared.items():
            a = group.create_array(name, shape=arr.shape, dtype=arr.dtype, compressors=[Crc32cCodec()])
            a[...] = arr
        group.attrs.update({**attrs, "signature": self.signature, "levels": list(levels), "shared": list(shared),
                            "shared_sha256": {name: pixel_digest(arr) for name, arr in shared.items()}})
        (tmp / "done").mkdir()
        try:
            os.rename(tmp, self.path)
        except OSError:  # already there from another process: keep theirs
            delete_ours(tmp)
        if not self.open():
            raise OSError(self.unusable or f"could not create the embeddings cache at {self.path}")

    @property
    def attrs(self) -> dict:
        return dict(self._group.attrs)

    def shared(self) -> dict[str, np.ndarray] | None:
        """The shared arrays, each checked against its recorded SHA-256; None (one warning) when damaged."""
        recorded = self._group.attrs.get("shared_sha256", {})
        try:
            out = {name: self._arrays[name][...] for name in self._group.attrs["shared"]}
            bad = [name for name, a in out.items() if pixel_digest(a) != recorded.get(name)]
        except Exception as e:  # CRC error, unreadable chunk
            bad = [f"({type(e).__name__}: {e})"]
        if not bad:
            return out
        if not self.shared_damaged:
            warnings.warn(f"embeddings cache {self.path}: the shared positional encodings are damaged "
                          f"({', '.join(bad)}); recomputing them", CorruptCacheWarning, stacklevel=4)
        self.shared_damaged = True
        return None

    def repair_shared(self, shared: dict[str, np.ndarray]) -> None:
        """Rewrite damaged shared arrays (recomputed by the encoder) and their checksums."""
        for name, arr in shared.items():
            self._arrays[name][...] = arr
        self._group.attrs["shared_sha256"] = {name: pixel_digest(arr) for name, arr in shared.items()}
        self.shared_damaged = False

    # ------------------------------------------------------------------ slices
    def _marker(self, index: int) -> Path:
        return self.path / "done" / str(int(index))

    def is_done(self, index: int) -> bool:
        return (self.unusable is None and index not in self._bad and self._marker(index).is_file()
                and (self.path / "zarr.json").exists())

    def done(self) -> set[int]:
        if self.unusable is not None or not (self.path / "zarr.json").exists():
            return set()
        try:
            names = os.listdir(self.path / "done")
        except OSError:
            return set()
        return {int(p) for p in names if p.isdigit() and int(p) not in self._bad and self._marker(int(p)).is_file()}

    def recorded(self, index: int) -> str | None:
        """The pixel digest in slice ``index``'s done marker; None when the slice is not done
        ("" when its marker is unreadable: it is then recomputed)."""
        if not self.is_done(index):
            return None
        try:
            return self._marker(index).read_text(encoding="ascii")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError):
            return ""

    def forget(self, index: int) -> None:
        """Mark slice ``index`` as not computed (its chunks are overwritten when it is recomputed).
        On a read-only cache the marker stays, but this process no longer trusts it."""
        self._bad.add(int(index))
        try:
            self._marker(index).unlink(missing_ok=True)
        except OSError:
            pass

    def write(self, index: int, arrays: dict[str, np.ndarray], digest: str) -> None:
        """Write slice ``index``'s chunks, then its done marker holding ``digest`` (atomically renamed)."""
        for name, arr in arrays.items():
            self._arrays[name][index] = arr
        marker = self._marker(index)
        if marker.is_dir() and not marker.is_symlink():  # damage inside our own folder: replace it
            shutil.rmtree(marker)
        tmp = marker.with_name(f"{_TMP_PREFIX}{index}-{uuid.uuid4().hex[:8]}")
        tmp.write_text(digest)
        os.replace(tmp, marker)
        self._bad.discard(int(index))

    def read(self, index: int) -> dict[str, np.ndarray] | None:
        """Slice ``index``'s arrays, or None when not computed or damaged (warned, marker removed)."""
        if not self.open() or not self.is_done(index):
            return None
        try:
            out = {name: self._arrays[name][index] for name in self._group.attrs["levels"]}
            if any(np.isnan(a).any() for a in out.values()):
                raise ValueError("missing chunk")
            return out
        except Exception as e:
            warnings.warn(
                f"embeddings cache {self.path}: slice {index} is damaged ({type(e).__name__}: {e}); recomputing it",
                CorruptCacheWarning, stacklevel=4,
            )
            self.forget(index)
            return None

    def clear(self) -> None:
        """Delete this stack's folder (only if it is ours)."""
        self._group, self._arrays = None, {}
        self._bad.clear()
        delete_ours(self.path)
