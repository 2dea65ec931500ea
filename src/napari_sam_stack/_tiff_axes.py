"""The axes of a TIFF series: the file's own when it names them, else our reading of its page
tags (used by :func:`napari_sam_stack.io.read_image`, which warns about the choice)."""

from __future__ import annotations

import numpy as np

__all__ = ["states_axes", "tiff_axes"]


def states_axes(tif, series) -> bool:
    """Whether the file names its axes (OME, ImageJ, a microscope format, tifffile's ``axes``
    metadata) rather than tifffile inferring them from the shape and the page tags."""
    if series.kind in ("generic", "uniform"):
        return False
    if series.kind == "shaped":
        meta = tif.shaped_metadata or ({},)
        return bool(meta[0].get("axes"))
    return True


def tiff_axes(tif, series) -> tuple[str, str | None]:
    """tifffile's letters (anything not T/Z/C/S/Y/X as Q), and a note when we, not the file, chose.

    When the file does not name its axes, tifffile's S (samples) is its own reading of the
    page tags: S stays colour only for photometric RGB, and not for a planar (S, Y, X) file
    of more than 8 bits (``tifffile.imwrite`` writes any (3, Y, X) array that way: usually a
    3-slice stack). Those samples, and one unnamed (Q) axis, become the slice axis Z.
    """
    import tifffile

    axes = "".join(a if a in "TZCSYX" else "Q" for a in series.axes.upper())
    if states_axes(tif, series):
        return axes, None
    shape, notes = series.shape, []
    page = series.pages[0] if series.pages and series.pages[0] is not None else tif.pages[0]
    if "S" in axes:
        k = axes.index("S")
        rgb = page.photometric == tifffile.PHOTOMETRIC.RGB
        planar = page.planarconfig == tifffile.PLANARCONFIG.SEPARATE
        if not rgb or (planar and np.dtype(series.dtype) != np.uint8):
            letter = "Z" if "Z" not in axes else "Q"
            why = "not RGB" if not rgb else f"{np.dtype(series.dtype)}, stored as separate planes"
            axes = axes[:k] + letter + axes[k + 1:]
            notes.append(f"its {shape[k]} samples ({why}) as {shape[k]} slices")
        elif planar:
            notes.append(f"its {shape[k]} planes as the colours of one RGB image")
    unnamed = [i for i, a in enumerate(axes) if a == "Q" and shape[i] > 1]
    if len(unnamed) == 1 and "Z" not in axes:
        i = unnamed[0]
        axes = axes[:i] + "Z" + axes[i + 1:]
        notes.append(f"its unnamed axis {i} (size {shape[i]}) as slices")
    if not notes:
        return axes, None
    return axes, f"the file does not name its axes: read {' and '.join(notes)} (axes {axes})"
