"""Showing and freeing the embeddings cache: :func:`cache_info`, :func:`clear_cache`.

Only folders that carry our own marker (:func:`._cache.is_ours`) are listed or deleted: a
``cache_dir`` pointing at a user's project folder lists nothing and deletes nothing of it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from ._cache import _TMP_PREFIX, delete_ours, is_ours, resolve_root
from ._validate import finite_number
from .errors import CacheError


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


def _root(cache_dir) -> Path:
    root = resolve_root(cache_dir)
    if root.exists() and not root.is_dir():
        raise CacheError(f"cache_dir {root} is a file, not a cache folder")
    return root


def _children(root: Path, tmp: bool) -> list[Path]:
    """Our entry folders (``tmp=False``) or our debris of interrupted creations/deletions (``tmp=True``)."""
    try:
        names = sorted(os.listdir(root))
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as e:
        raise CacheError(f"cannot list the embeddings cache {root}: {e}") from None
    return [root / n for n in names if n.startswith(_TMP_PREFIX) == tmp and is_ours(root / n)]


def _entry(p: Path) -> CacheEntry:
    try:
        meta = json.loads((p / "zarr.json").read_text())["attributes"]
        sig = meta["signature"]
    except (OSError, ValueError, KeyError, TypeError):
        meta, sig = {}, {}
    try:
        done = len([d for d in os.listdir(p / "done") if d.isdigit()])
    except OSError:
        done = 0
    try:
        shape = tuple(int(s) for s in meta["frame_shape"])
    except (KeyError, TypeError, ValueError):
        shape = None
    return CacheEntry(p, _folder_size(p), int(meta.get("slices", 0) or 0), done, shape,
                      str(meta.get("model_name", sig.get("model", "?"))), p.stat().st_mtime)


def cache_info(cache_dir: str | os.PathLike | None = None) -> CacheInfo:
    """Describe the embeddings cache (default: the per-user one); only folders of ours are listed.

    CacheError for ``cache_dir=""`` or a file.
    """
    root = _root(cache_dir)
    entries = [_entry(p) for p in _children(root, tmp=False)]
    debris = sum(_folder_size(p) for p in _children(root, tmp=True))
    return CacheInfo(root, sum(e.size for e in entries) + debris, entries)


def clear_cache(cache_dir: str | os.PathLike | None = None, older_than_days: float | None = None) -> int:
    """Delete cached embeddings (all, or those untouched for ``older_than_days``); returns the bytes
    actually freed (0 on a read-only cache).

    Only folders carrying our cache marker are deleted, never anything else in ``cache_dir``.
    Our leftovers of interrupted cache creation are always removed. CacheError for
    ``cache_dir=""``, a file, or an age that is not a number >= 0.
    """
    cutoff = None
    if older_than_days is not None:
        days = finite_number(older_than_days, "older_than_days", CacheError, minimum=0)
        cutoff = time.time() - days * 86400
    root = _root(cache_dir)
    doomed = [p for p in _children(root, tmp=False) if cutoff is None or p.stat().st_mtime < cutoff]
    freed = 0
    for p in [*doomed, *_children(root, tmp=True)]:
        before = _folder_size(p)
        if delete_ours(p):
            freed += before
    return freed
