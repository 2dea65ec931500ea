"""napari side of napari-sam-stack: the dock widget, prompt layers, key bindings, workers, sample data.

Only this package imports napari and Qt (through qtpy); the engine around it does not.
Attributes load lazily, so the sample-data command imports neither Qt nor torch.

Panels of other modules (``_automatic.py``: segment everything; ``_train.py``: finetuning)
dock in the main widget as collapsible sections, when the module imports (``PANELS`` in
``_widget.py``). A panel module defines a ``QWidget`` subclass named ``Panel`` (or ending in
``Panel``) whose constructor takes the main widget, and optionally a ``TITLE``. It uses:

- ``widget.annotation``: the :class:`~napari_sam_stack.Annotation` shown (objects, labels);
  ``widget.session`` its engine; ``widget.viewer``; ``widget.current_index()`` the slice shown;
- ``widget.run_worker(fn, desc=..., total=..., generator=False, on_yield=None, on_done=None)``:
  ``fn(task)`` in a worker thread with a progress bar and the widget's Cancel button
  (``task.progress(done, total)``, ``task.is_cancelled()``); ``on_yield`` / ``on_done(result,
  cancelled)`` run on the main thread; then the preview and the objects panel are refreshed;
- ``widget.refresh()``: repaint the preview and the objects panel from the annotation;
- ``widget.report(error)`` / ``widget.set_status(text)``: a notification / the status line.

Change the annotation on the main thread (``on_yield`` / ``on_done``): its events update
the views at once. Commits go through ``annotation.commit`` (one undo step in the labels layer).
"""

from __future__ import annotations

_LAZY = {
    "SamStackWidget": "._widget",
    "make_sample_nuclei": "._sample",
    "make_sample_nuclei_real": "._sample",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name], __name__), name)
