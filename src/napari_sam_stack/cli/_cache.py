"""``cache info`` / ``cache clear [ENTRY]``: what the embeddings cache holds, and freeing it."""

from __future__ import annotations

import json
import time

from ..errors import CacheError
from . import _common as c

EXAMPLES = """examples:
  napari-sam-stack cache info
  napari-sam-stack cache info --cache-dir /shared/cache
  napari-sam-stack cache clear 3f9a1c            (one entry: its key, or the start of it, as `cache info` shows)
  napari-sam-stack cache clear stack.tif         (the entries made from that file)
  napari-sam-stack cache clear --older-than-days 30
  napari-sam-stack cache clear                   (everything)"""


def add(sub) -> None:
    p = c.subcommand(sub, "cache", "show or clear the embeddings cache",
                     "List the cached stacks (source file, shape, model, size) or delete them. "
                     "Only folders made by napari-sam-stack are listed or deleted.", EXAMPLES)
    p.add_argument("action", choices=["info", "clear"])
    p.add_argument("entry", nargs="?", help="clear: only this entry (key or its first characters, or the source file name)")
    p.add_argument("--cache-dir", type=c.cache_dir, default=None, help="cache folder (default: the user cache)")
    p.add_argument("--older-than-days", type=float, default=None, help="clear: only stacks untouched this many days")
    p.set_defaults(func=run)


def _source(entry) -> str:
    try:
        return json.loads((entry.path / "source.json").read_text())["source"]
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def describe(info) -> str:
    from .._cache_admin import _human

    lines = [f"embeddings cache {info.path}: {_human(info.size)} in {c.plural(len(info.entries), 'stack')}"]
    for e in info.entries:
        from pathlib import Path

        src = _source(e)
        shape = "x".join(map(str, (e.slices, *(e.frame_shape or ()))))
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.modified))
        lines.append(f"  {e.path.name[:12]}  {Path(src).name if src else '(source not recorded)':24s} {shape:>14s}  "
                     f"{e.computed}/{e.slices} slices  {e.model:24s} {_human(e.size):>9s}  {when}")
    return "\n".join(lines)


def _matching(info, entry: str) -> list:
    from pathlib import Path

    key = entry.strip().lower()
    if len(key) >= 4 and all(ch in "0123456789abcdef" for ch in key):
        by_key = [e for e in info.entries if e.path.name.startswith(key)]
        if by_key:
            return by_key
    return [e for e in info.entries if _source(e) and (Path(_source(e)).name == entry or _source(e) == str(Path(entry).resolve()))]


def run(args) -> int:
    from .._cache import delete_ours
    from ..embeddings import cache_info, clear_cache

    if args.action == "info":
        if args.entry or args.older_than_days is not None:
            raise CacheError("cache info takes no entry and no --older-than-days (those are for cache clear)")
        print(describe(cache_info(args.cache_dir)))
        return 0
    if args.entry is None:
        freed = clear_cache(args.cache_dir, older_than_days=args.older_than_days)
    else:
        if args.older_than_days is not None:
            raise CacheError("give either an entry or --older-than-days, not both")
        info = cache_info(args.cache_dir)
        hits = _matching(info, args.entry)
        if not hits:
            raise CacheError(f"no cache entry {args.entry!r} in {info.path} (see `napari-sam-stack cache info`)")
        freed = 0
        for e in hits:
            if delete_ours(e.path):
                freed += e.size
    print(f"freed {freed / 2**20:.1f} MB")
    print(describe(cache_info(args.cache_dir)))
    return 0
