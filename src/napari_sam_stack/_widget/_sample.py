"""Sample data for napari's File > Open Sample menu (npe2 ``sample_data`` contributions).

Neither function imports torch or Qt.
"""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "data"


def make_sample_nuclei():
    """A synthetic 3D stack of fluorescent nuclei: 20 slices of 96 x 128, uint16, z twice as coarse."""
    from ..testing import synthetic_nuclei

    image, _ = synthetic_nuclei(shape=(20, 96, 128), n_nuclei=8, seed=0)
    return [(image, {"name": "nuclei (synthetic)", "scale": (2.0, 1.0, 1.0), "colormap": "gray"}, "image")]


def make_sample_nuclei_real():
    """Real fluorescence nuclei (31 x 61 x 57, uint16) from the stardist test images (BSD-3-Clause)."""
    import tifffile

    image = tifffile.imread(DATA / "img3d.tif")
    return [(image, {"name": "nuclei (stardist)", "colormap": "gray"}, "image")]
