"""Keyboard shortcuts of the widget.

Bound on the viewer and on the prompt layers (``overwrite=True``), because a layer's
own bindings take precedence over the viewer's: without that, the Points or Shapes
layer would swallow the keys while the user is clicking prompts.
"""

from __future__ import annotations

# (widget method, key, description): the single source for bindings, the widget's help and docs/usage.md.
KEYS: list[tuple[str, str, str]] = [
    ("toggle_polarity", "N", "toggle positive / negative clicks (in select mode, the selected points switch too)"),
    ("cycle_candidate", "M", "cycle the 3 candidate masks of a single click (shows SAM's predicted IoU)"),
    ("propagate", "Shift-P", "propagate the current object through the stack (SAM 2)"),
    ("commit", "Shift-C", "commit the current object into the labels layer (one Ctrl+Z undoes it)"),
    ("clear_object", "Shift-X", "clear the current object's prompts and preview"),
    ("next_object", "Shift-N", "start the next object (new id)"),
    ("box_mode", "Shift-B", "draw one box prompt (rectangle); the clicks mode comes back by itself"),
    ("undo_labels", "Control-Z", "undo the last commit / delete on the labels layer, whichever layer is active"),
    ("redo_labels", "Control-Shift-Z", "redo it"),
]


def key_of(method: str) -> str | None:
    """The key bound to a widget method, or None."""
    return next((k for m, k, _ in KEYS if m == method), None)


def help_text() -> str:
    return "\n".join(f"{key:>8}  {desc}" for _, key, desc in KEYS)


def _handler(widget, method: str):
    def handle(_target=None):
        if not getattr(widget, "_closed", False):
            getattr(widget, method)()

    handle.__name__ = f"sam_stack_{method}"
    handle.__doc__ = dict((m, d) for m, _, d in KEYS)[method]
    handle.sam_stack_widget = widget
    return handle


def bind_keys(widget, target, methods=None) -> None:
    """Bind the shortcuts (all, or those of ``methods``) on ``target`` (a viewer or a layer) to ``widget``."""
    for method, key, _ in KEYS:
        if methods is None or method in methods:
            target.bind_key(key, _handler(widget, method), overwrite=True)


def unbind_keys(widget, target) -> None:
    """Remove ``widget``'s shortcuts from ``target``; a binding someone else made since stays."""
    for _, key, _ in KEYS:
        func = target.bind_key(key, None, overwrite=True)
        if func is not None and getattr(func, "sam_stack_widget", None) is not widget:
            target.bind_key(key, func, overwrite=True)
