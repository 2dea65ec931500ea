"""The README's demo command, run for real (under the test session's X server) with a random-weight model."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image


@pytest.mark.gui
def test_demo_opens_viewer_with_sample_and_widget(tmp_path, qapp):
    # qapp: makes pytest-xvfb's display available to this test; the demo runs in its own process
    shot = tmp_path / "demo.png"
    r = subprocess.run(
        [sys.executable, "-m", "napari_sam_stack.cli", "demo", "--test-model", "--screenshot", str(shot)],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    img = Image.open(shot)
    assert img.size[0] > 400 and img.size[1] > 300
    assert len(np.unique(np.asarray(img.convert("L")))) > 20  # a rendered window, not a blank frame


def test_demo_says_where_weights_come_from():
    from argparse import Namespace

    from napari_sam_stack._widget._demo import _weights_hint

    hint = _weights_hint(Namespace(model="sam2.1_hiera_tiny"))
    assert "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_tiny.pt" in hint
    assert "--checkpoint" in hint and "local checkpoint" in hint


@pytest.mark.parametrize("display", [None, "dead"], ids=["no-DISPLAY", "unreachable-DISPLAY"])
def test_demo_without_a_display_says_so_in_one_line(display):
    import os
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k not in {"DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"}}
    if display:
        env["DISPLAY"] = next(f":{n}" for n in range(987, 1100) if not Path(f"/tmp/.X11-unix/X{n}").exists())
    r = subprocess.run([sys.executable, "-m", "napari_sam_stack.cli", "demo", "--test-model"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])  # not -6: Qt never got to abort
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("napari-sam-stack demo: napari cannot open its window here: ")
    if display:
        assert f"could not connect to display {env['DISPLAY']}" in lines[0]
    else:
        assert "DISPLAY is unset" in lines[0] and "xvfb-run -a tox -e demo -- --screenshot demo.png" in lines[0]


@pytest.mark.gui
def test_offline_demo_segments_a_real_nucleus_under_its_example_click(make_napari_viewer):
    """What a new user without internet sees: the shipped model's preview covers the nucleus it clicked."""
    import tifffile

    from napari_sam_stack._widget import SamStackWidget, make_sample_nuclei_real
    from napari_sam_stack._widget._demo import OFFLINE_MODEL, show_example
    from napari_sam_stack._widget._sample import DATA

    viewer = make_napari_viewer()
    (image, meta, _), = make_sample_nuclei_real()
    viewer.add_image(image, **meta)
    widget = SamStackWidget(viewer)
    viewer.window.add_dock_widget(widget, area="right")
    widget.device_combo.setCurrentText("cpu")
    z, y, x = show_example(viewer, widget, OFFLINE_MODEL)
    widget.wait()
    truth = tifffile.imread(DATA / "mask3d.tif")[z] == tifffile.imread(DATA / "mask3d.tif")[z, y, x]
    shown = np.asarray(widget.preview_layer.data[z]) > 0
    assert viewer.dims.current_step[0] == z and widget.model.name == OFFLINE_MODEL
    assert shown[y, x] and shown.sum() > 0
    dice = 2 * (shown & truth).sum() / (shown.sum() + truth.sum())
    assert dice > 0.5, dice  # a trained model's mask, not a random-weight blob (the held-out median is ~0.8)
    assert not np.asarray(widget.preview_layer.data[[i for i in range(image.shape[0]) if i != z]]).any()
