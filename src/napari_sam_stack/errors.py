"""Exception types of napari-sam-stack.

Every error a user can cause has its own type and a message that says what to do.
They subclass the builtin they refine, so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class SamStackError(Exception):
    """Base class of all napari-sam-stack errors."""


class UnknownModelError(SamStackError, KeyError):
    """A model name that is not in the registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class CheckpointError(SamStackError, ValueError):
    """A checkpoint file that is missing, truncated, corrupt or of the wrong architecture."""


class HashMismatchError(CheckpointError):
    """A downloaded or local checkpoint whose SHA-256 differs from the registry's."""


class DownloadError(SamStackError, OSError):
    """Weights could not be downloaded (offline, unreachable host, ...)."""


class DeviceError(SamStackError, ValueError):
    """A requested torch device that is not available on this machine."""


class ImageError(SamStackError, ValueError):
    """An image that cannot be read as slices: wrong dimensions for the axes asked, a bad
    channel choice, unusable contrast limits, a dtype that is not numeric, a slice index
    out of range."""


class PromptError(SamStackError, ValueError):
    """A prompt (points, box, mask, slice index, object id) that cannot be used."""


class CacheError(SamStackError, ValueError):
    """An embeddings cache folder that cannot be used or managed as asked (``""``, a file, a
    folder that is not a napari-sam-stack cache, a negative age)."""


class ModelFamilyError(SamStackError, ValueError):
    """An operation that needs another model family (e.g. propagation needs SAM 2)."""


class Cancelled(SamStackError):
    """A long operation (embeddings, propagation) stopped because the caller cancelled it."""


class OutputError(SamStackError, ValueError):
    """An output path that cannot be written as asked: the input itself, an existing file
    without ``overwrite``, a folder that does not exist, an unknown format."""


class AnnotationError(SamStackError, ValueError):
    """An annotation call that cannot be done: an unknown or invalid object id, nothing to
    commit or propagate, a bad candidate, labels of the wrong shape."""


class ProjectError(SamStackError, ValueError):
    """A project folder that is missing, corrupt, truncated, foreign or from a newer version,
    or that does not fit the image or model it is opened with; or a save that would replace
    something it must not."""


class OtherProjectError(ProjectError):
    """A save onto another project folder without ``overwrite=True`` (the widget asks first)."""


class OtherModelError(ProjectError):
    """A project opened with another model than it was made with, without ``allow_model_change=True``."""


class AutomaticError(SamStackError, ValueError):
    """Segment-everything parameters out of range or of the wrong type, or key slices that do not fit."""


class TrainingError(SamStackError, ValueError):
    """Training options or data that cannot be used, or a training state that does not fit."""
