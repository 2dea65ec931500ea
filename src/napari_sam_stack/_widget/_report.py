"""Errors become napari notifications, never traceback dialogs."""

from __future__ import annotations

import functools
import logging

from ..errors import Cancelled, PromptError, SamStackError

log = logging.getLogger("napari_sam_stack")


class UserError(ValueError):
    """Something the user has to do first (load a model, open an image)."""


def notify(error: BaseException) -> None:
    """Warning for user mistakes, error for failures, info for cancels; unexpected errors are logged."""
    from napari.utils.notifications import show_error, show_info, show_warning

    if isinstance(error, Cancelled):
        show_info(str(error) or "cancelled")
    elif isinstance(error, (UserError, PromptError)):
        show_warning(str(error))
    elif isinstance(error, SamStackError):
        show_error(str(error))
    else:
        log.warning("unexpected error", exc_info=error)
        show_error(f"{type(error).__name__}: {error}")


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
