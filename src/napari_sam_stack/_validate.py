"""Argument checks shared by every public entry point: integers, object ids, flags.

Each check raises one of our exception types (the ``error`` argument, a
:class:`~napari_sam_stack.errors.SamStackError` subclass) with a message that names the
argument and says what to pass; none of them does any work first. ``bool`` is never an
integer here (``True`` is not slice 1), and neither are floats or strings, even ``1.0``
or ``"1"``; Python and numpy integers are.
"""

from __future__ import annotations

import math
import operator

import numpy as np

from .errors import PromptError, SamStackError

MAX_OBJECT_ID = 2**32 - 1
"""Largest object id: labels are stored as uint32."""


def is_bool(value) -> bool:
    return isinstance(value, (bool, np.bool_)) or (isinstance(value, np.ndarray) and value.dtype == bool)


def integer(value, what: str, error: type[SamStackError] = PromptError) -> int:
    """``value`` as a Python int; ``error`` ("<what> must be an integer") for bool, float, str, None, ..."""
    if not is_bool(value):
        try:
            return operator.index(value)  # int, numpy integers, 0-d integer arrays
        except TypeError:
            pass
    raise error(f"{what} must be an integer, got {value!r} ({type(value).__name__})")


def integer_in(value, what: str, lo: int, hi: int, error: type[SamStackError] = PromptError) -> int:
    """An integer in ``lo..hi`` (inclusive)."""
    i = integer(value, what, error)
    if not lo <= i <= hi:
        raise error(f"{what} must be in {lo}..{hi}, got {i}")
    return i


def object_id(value, error: type[SamStackError] = PromptError) -> int:
    """An object id: 1..2**32-1 (0 is background; ids are stored as uint32 labels)."""
    i = integer(value, "object id", error)
    if not 1 <= i <= MAX_OBJECT_ID:
        raise error(f"object ids are 1..{MAX_OBJECT_ID} (0 is background; labels are uint32), got {i}")
    return i


def positive_or_none(value, what: str, error: type[SamStackError] = PromptError) -> int | None:
    """None, or an integer >= 1 (e.g. ``max_absent``)."""
    if value is None:
        return None
    i = integer(value, what, error)
    if i < 1:
        raise error(f"{what} must be a positive number of slices (or None), got {i}")
    return i


def flag(value, what: str, *, allow_none: bool = False, error: type[SamStackError] = PromptError) -> bool | None:
    """True/False (numpy bools too), or None when ``allow_none``; never a truthy string or number."""
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    allowed = "True, False or None" if allow_none else "True or False"
    raise error(f"{what} must be {allowed}, got {value!r}")


def finite_number(value, what: str, error: type[SamStackError], *, minimum: float | None = None) -> float:
    """A real, finite number (not bool), at least ``minimum`` when given."""
    if is_bool(value) or isinstance(value, (str, bytes)):
        raise error(f"{what} must be a number, got {value!r}")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise error(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(x) or (minimum is not None and x < minimum):
        raise error(f"{what} must be a finite number" + (f" >= {minimum:g}" if minimum is not None else "")
                    + f", got {value!r}")
    return x
