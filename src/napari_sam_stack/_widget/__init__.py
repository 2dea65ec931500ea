"""napari side of napari-sam-stack: the dock widget, prompt layers, key bindings, workers, sample data.

Only this package imports napari and Qt (through qtpy); the engine around it does not.
Attributes load lazily, so the sample-data command imports neither Qt nor torch.
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
