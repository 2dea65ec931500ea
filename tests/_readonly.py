"""A read-only folder for tests that run as root (where chmod restricts nothing).

``read_only(monkeypatch, root, unreadable=...)`` makes every write, rename and delete under
``root`` fail with EROFS, and reading the ``unreadable`` files fail with EACCES, as a
read-only mount or another user's cache would, at the level of the os / io calls that
zarr, pathlib and shutil use.
"""

from __future__ import annotations

import builtins
import errno
import io
import os
import shutil

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def read_only(monkeypatch, root, unreadable=()) -> None:
    top = os.path.abspath(os.fspath(root))
    locked = {os.path.abspath(os.fspath(p)) for p in unreadable}

    def under(p) -> bool:
        try:
            p = os.fspath(p)
        except TypeError:
            return False  # a file descriptor
        if isinstance(p, bytes):
            p = os.fsdecode(p)
        p = os.path.abspath(p)
        return p == top or p.startswith(top + os.sep)

    def refuse(p):
        raise PermissionError(errno.EROFS, "Read-only file system", os.fspath(p))

    def one(real):
        def wrapper(path, *a, **k):
            if k.get("dir_fd") is None and under(path):
                refuse(path)
            return real(path, *a, **k)
        return wrapper

    def two(real):
        def wrapper(src, dst, *a, **k):
            if under(src) or under(dst):
                refuse(src)
            return real(src, dst, *a, **k)
        return wrapper

    for name in ("unlink", "remove", "rmdir", "mkdir", "utime", "chmod"):
        monkeypatch.setattr(os, name, one(getattr(os, name)))
    for name in ("rename", "replace", "link"):
        monkeypatch.setattr(os, name, two(getattr(os, name)))

    real_os_open = os.open

    def os_open(path, flags, *a, **k):
        if k.get("dir_fd") is None and under(path):
            if flags & _WRITE_FLAGS:
                refuse(path)
            if os.path.abspath(os.fspath(path)) in locked:
                raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_os_open(path, flags, *a, **k)

    monkeypatch.setattr(os, "open", os_open)
    real_open = io.open

    def file_open(file, mode="r", *a, **k):
        if not isinstance(file, int) and under(file):
            if any(c in mode for c in "wax+"):
                refuse(file)
            if os.path.abspath(os.fspath(file)) in locked:
                raise PermissionError(errno.EACCES, "Permission denied", os.fspath(file))
        return real_open(file, mode, *a, **k)

    monkeypatch.setattr(io, "open", file_open)
    monkeypatch.setattr(builtins, "open", file_open)
    real_rmtree = shutil.rmtree

    def rmtree(path, ignore_errors=False, *a, **k):
        if under(path):
            if ignore_errors:
                return
            refuse(path)
        return real_rmtree(path, ignore_errors, *a, **k)

    monkeypatch.setattr(shutil, "rmtree", rmtree)
