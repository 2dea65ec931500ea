"""The on-disk embeddings cache: one zarr (v3) group per signature, one chunk per slice.

Layout of ``<root>/<key>/`` (``key`` = hash of the signature, so a different image,
model, preprocessing, storage dtype or package version never shares a folder)::

    zarr.json            group; attrs: the full signature and the slice layout
    fpn_0 .. fpn_k/      SAM 2: (N, C, H, W) per FPN level; SAM 1: ``features``
    pos_0 .. pos_k/      SAM 2 positional encodings, (C, H, W), stored once
    done/<i>             written after slice i's chunks: the slice is complete; holds
                         the SHA-256 of the slice's raw pixels it was encoded from

Crash safety: the group is built in a temporary folder and renamed into place; zarr
writes each chunk to a temporary file and renames it; a slice counts as computed only
once its ``done/<i>`` marker exists, and the marker is written after its chunks. A
process killed at any moment therefore leaves complete slices and slices without a
marker, which are recomputed. Chunks carry a CRC32C checksum: a damaged chunk is
reported with a :class:`CorruptCacheWarning` and its slice recomputed.

The folder is chosen by a cheap sampled signature; each slice's marker holds
:func:`pixel_digest` of the exact pixels it was encoded from, which the store
compares with the image's current pixels whenever it reads the slice from disk
(:class:`StaleCacheWarning` and a recomputation when they differ).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = 2  # 2: done markers hold the slice's pixel digest
_TMP_PREFIX = ".tmp-"


class CorruptCacheWarning(RuntimeWarning):
    """A cached slice could not be read back intact; it is recomputed."""


class StaleCacheWarning(CorruptCacheWarning):
    """A cached slice was encoded from other pixels than the image has now; it is recomputed."""


def pixel_digest(raw: np.ndarray) -> str:
    """SHA-256 of one slice's raw pixels (dtype, shape and bytes), as recorded in its done marker."""
    a = np.ascontiguousarray(raw)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(memoryview(a.reshape(-1).view(np.uint8)))
    return h.hexdigest()


def default_root() -> Path:
    """``models.cache_root() / "embeddings"`` (``$NAPARI_SAM_STACK_CACHE`` moves it)."""
    from .models import cache_root

    return cache_root() / "embeddings"


def signature_key(signature: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(signature, sort_keys=True).encode()).hexdigest()[:24]


class SliceCache:
    """Reads and writes per-slice arrays of one signature under ``root/<key>``.

    Thread-safe for concurrent reads and writes of different slices; the caller
    serialises writes (and :meth:`create`).
    """

    def __init__(self, root: str | os.PathLike, signature: dict[str, Any], n_slices: int):
        self.signature = signature
        self.n = int(n_slices)
        self.root = Path(root)
        self.path = self.root / signature_key(signature)
        self._group = None

    # ------------------------------------------------------------------ open / create
    def open(self) -> bool:
        """Open the group when it exists; a damaged or foreign one is removed. True when open."""
        if not (self.path / "zarr.json").exists():  # never created, or cleared meanwhile
            self._group = None
            return False
        if self._group is not None:
            return True
        import zarr

        try:
            group = zarr.open_group(self.path, mode="r+")
            ok = group.attrs.get("signature") == self.signature
        except Exception:  # unreadable metadata
            ok = False
        if not ok:
            warnings.warn(f"embeddings cache {self.path} does not match its signature: recomputing it", CorruptCacheWarning, stacklevel=3)
            shutil.rmtree(self.path, ignore_errors=True)
            return False
        self._group = group
        try:
            os.utime(self.path)  # "last used", for clear_cache(older_than_days=...)
        except OSError:
            pass
        return True

    def create(self, levels: dict[str, tuple[tuple[int, ...], str]], shared: dict[str, np.ndarray], attrs: dict) -> None:
        """Build the group in a temporary folder, then rename it into place (atomic).

        ``levels``: name -> (per-slice shape, dtype); ``shared``: arrays stored once.
        If another process got there first, its group is used.
        """
        if self.open():
            return
        import zarr
        from zarr.codecs import Crc32cCodec

        self.root.mkdir(parents=True, exist_ok=True)
        for old in self.root.glob(_TMP_PREFIX + "*"):  # debris of creations killed long ago
            try:
                if time.time() - old.stat().st_mtime > 86400:
                    shutil.rmtree(old, ignore_errors=True)
            except OSError:
                pass
        tmp = self.root / f"{_TMP_PREFIX}{self.path.name}-{uuid.uuid4().hex[:8]}"
        group = zarr.open_group(tmp, mode="w", zarr_format=3)
        for name, (shape, dtype) in levels.items():
            group.create_array(name, shape=(self.n, *shape), chunks=(1, *shape), dtype=dtype,
                               compressors=[Crc32cCodec()], fill_value=np.nan)
        for name, arr in shared.items():
            a = group.create_array(name, shape=arr.shape, dtype=arr.dtype, compressors=[Crc32cCodec()])
            a[...] = arr
        group.attrs.update({**attrs, "signature": self.signature, "levels": list(levels), "shared": list(shared)})
        (tmp / "done").mkdir()
        try:
            os.rename(tmp, self.path)
        except OSError:
            if not (self.path / "zarr.json").exists():  # debris of an interrupted clear: replace it
                shutil.rmtree(self.path, ignore_errors=True)
                try:
                    os.rename(tmp, self.path)
                except OSError:
                    pass
            shutil.rmtree(tmp, ignore_errors=True)  # (already there from another process: keep theirs)
        if not self.open():
            raise OSError(f"could not create the embeddings cache at {self.path}")

    @property
    def attrs(self) -> dict:
        return dict(self._group.attrs)

    def shared(self) -> dict[str, np.ndarray]:
        return {name: self._group[name][...] for name in self._group.attrs["shared"]}

    # ------------------------------------------------------------------ slices
    def _marker(self, index: int) -> Path:
        return self.path / "done" / str(int(index))

    def is_done(self, index: int) -> bool:
        return self._marker(index).exists()

    def done(self) -> set[int]:
        try:
            return {int(p) for p in os.listdir(self.path / "done") if p.isdigit()}
        except FileNotFoundError:
            return set()

    def recorded(self, index: int) -> str | None:
        """The pixel digest in slice ``index``'s done marker; None when the slice is not done."""
        try:
            return self._marker(index).read_text()
        except FileNotFoundError:
            return None

    def forget(self, index: int) -> None:
        """Mark slice ``index`` as not computed (its chunks are overwritten when it is recomputed)."""
        self._marker(index).unlink(missing_ok=True)

    def write(self, index: int, arrays: dict[str, np.ndarray], digest: str) -> None:
        """Write slice ``index``'s chunks, then its done marker holding ``digest`` (atomically renamed)."""
        for name, arr in arrays.items():
            self._group[name][index] = arr
        marker = self._marker(index)
        tmp = marker.with_name(f"{_TMP_PREFIX}{index}-{uuid.uuid4().hex[:8]}")
        tmp.write_text(digest)
        os.replace(tmp, marker)

    def read(self, index: int) -> dict[str, np.ndarray] | None:
        """Slice ``index``'s arrays, or None when not computed or damaged (warned, marker removed)."""
        if not self.open() or not self.is_done(index):
            return None
        try:
            out = {name: self._group[name][index] for name in self._group.attrs["levels"]}
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
        self._group = None
        shutil.rmtree(self.path, ignore_errors=True)


# ---------------------------------------------------------------- management


@dataclass
class CacheEntry:
    """One cached stack: its folder, what it holds and how much room it takes."""

    path: Path
    size: int
    slices: int
    computed: int
    frame_shape: tuple | None
    model: str
    modified: float

    def __str__(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.modified))
        shape = "x".join(map(str, self.frame_shape or ()))
        return f"{self.path.name}  {_human(self.size):>9s}  {self.computed}/{self.slices} slices of {shape}  {self.model}  {when}"


@dataclass
class CacheInfo:
    """Where the embeddings cache lives, its total size and its entries."""

    path: Path
    size: int
    entries: list[CacheEntry] = field(default_factory=list)

    def __str__(self) -> str:
        head = f"embeddings cache {self.path}: {_human(self.size)} in {len(self.entries)} stack(s)"
        return "\n".join([head, *("  " + str(e) for e in self.entries)])


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _folder_size(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total


def cache_info(cache_dir: str | os.PathLike | None = None) -> CacheInfo:
    """Describe the embeddings cache (default: the per-user one)."""
    root = Path(cache_dir) if cache_dir is not None else default_root()
    entries = []
    if root.is_dir():
        for p in sorted(root.iterdir()):
            if not p.is_dir() or p.name.startswith(_TMP_PREFIX):
                continue
            try:
                meta = json.loads((p / "zarr.json").read_text())["attributes"]
                sig = meta["signature"]
            except (OSError, ValueError, KeyError):
                meta, sig = {}, {}
            frames = sig.get("frames", {})
            done = len([d for d in os.listdir(p / "done") if d.isdigit()]) if (p / "done").is_dir() else 0
            entries.append(CacheEntry(
                p, _folder_size(p), int(meta.get("slices", 0)), done,
                tuple(meta["frame_shape"]) if "frame_shape" in meta else None,
                str(meta.get("model_name", sig.get("model", "?"))), p.stat().st_mtime,
            ))
    return CacheInfo(root, sum(e.size for e in entries) + _tmp_size(root), entries)


def _tmp_size(root: Path) -> int:
    return sum(_folder_size(p) for p in root.glob(_TMP_PREFIX + "*")) if root.is_dir() else 0


def clear_cache(cache_dir: str | os.PathLike | None = None, older_than_days: float | None = None) -> int:
    """Delete cached embeddings (all, or those untouched for ``older_than_days``); returns bytes freed.

    Leftovers of interrupted cache creation are always removed.
    """
    info = cache_info(cache_dir)
    freed = 0
    cutoff = None if older_than_days is None else time.time() - older_than_days * 86400
    doomed = [e.path for e in info.entries if cutoff is None or e.modified < cutoff]
    doomed += list(info.path.glob(_TMP_PREFIX + "*")) if info.path.is_dir() else []
    for p in doomed:
        freed += _folder_size(p)
        shutil.rmtree(p, ignore_errors=True)
    return freed
