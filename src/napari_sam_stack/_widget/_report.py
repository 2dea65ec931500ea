"""Errors become napari notifications, never traceback dialogs."""

from __future__ import annotations

import functools
import logging
import re

from ..errors import AnnotationError, Cancelled, DownloadError, PromptError, SamStackError

log = logging.getLogger("napari_sam_stack")


class UserError(ValueError):
    """Something the user has to do first (load a model, open an image)."""


def notify(error: BaseException) -> None:
    """Warning for user mistakes, error for failures, info for cancels; unexpected errors are logged."""
    from napari.utils.notifications import show_error, show_info, show_warning

    if isinstance(error, Cancelled):
        show_info(str(error) or "cancelled")
    elif isinstance(error, (UserError, PromptError, AnnotationError)):
        show_warning(str(error))
    elif isinstance(error, SamStackError):
        show_error(str(error))
    else:
        log.warning("unexpected error", exc_info=error)
        show_error(f"{type(error).__name__}: {error}")


SHORT = 100


def short_message(error: BaseException | str) -> str:
    """One short line for the status: the first sentence, cut to ~100 characters (the notification has it all)."""
    if isinstance(error, DownloadError) and getattr(error, "short", None):
        return error.short
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    text = re.split(r"(?<=[a-z0-9)'\]])\.\s+(?=[A-Z(])", text, maxsplit=1)[0]
    return text if len(text) <= SHORT else text[: SHORT - 1].rstrip() + "…"


def explain_download(error: BaseException, name: str | None) -> BaseException:
    """A failed download of a registry model, told in the widget's words (what to pick, where the file goes)."""
    if not isinstance(error, DownloadError) or name is None:
        return error
    from ..models import available_models, model_spec, weights_dir

    if name not in available_models():
        return error
    spec = model_spec(name)
    target = weights_dir() / spec.filename
    kind = f"config {spec.config}" if spec.family == "sam2" else f"type {spec.model_type}"
    out = DownloadError(
        f"Could not download {name} (offline?). Download {spec.url} on a connected machine, then copy it to "
        f"{target} and press Load model again, or pick 'local checkpoint…' in Model, choose the file and "
        f"set {kind}. ({error.__cause__ or error})"
    )
    out.short = f"could not download {name} (offline?): see the notification"
    out.__cause__ = error
    return out


def reporting(fn, report):
    """``fn`` with any exception passed to ``report`` instead of propagating into Qt (callbacks)."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            report(e)
            return None

    return run


def reported(fn):
    """Method decorator: any exception goes to ``self.report`` instead of propagating into Qt."""

    @functools.wraps(fn)
    def run(self, *args, **kwargs):
        return reporting(fn, self.report)(self, *args, **kwargs)

    return run
