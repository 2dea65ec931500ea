"""napari-sam-stack: SAM and SAM 2 for microscopy stacks, in napari and in scripts.

Importing this package is light: no Qt, no napari, no torch until a model is loaded.

    import napari_sam_stack as nss
    m = nss.load_model("sam2.1_hiera_tiny")
    s = nss.Session(stack, m, axis=0)
    r = s.predict(10, points=[[120, 88]], point_labels=[1])
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "available_models": "models",
    "load_model": "models",
    "register_model": "models",
    "ModelSpec": "models",
    "LoadedModel": "models",
    "Session": "session",
    "Annotation": "annotation",
    "Frames": "normalise",
    "Prediction": "predict",
    "cache_info": "embeddings",
    "clear_cache": "embeddings",
    "automatic": None,
    "errors": None,
    "io": None,
    "models": None,
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'napari_sam_stack' has no attribute {name!r}")
    import importlib

    if _LAZY[name] is None:
        return importlib.import_module(f".{name}", __name__)
    return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)


def __dir__():
    return __all__
