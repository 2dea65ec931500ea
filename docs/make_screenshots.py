"""Screenshots of the click -> preview -> propagate -> commit loop, for docs/usage.md.

Drives the real viewer and widget on the real nuclei stack (stardist test image,
BSD-3, shipped as the plugin's "Nuclei (real 3D)" sample) with the shipped
``nss_nuclei_micro`` model (a micro SAM 2 trained from scratch on part of that stack by
scripts/train_nuclei.py; no pretrained weights can be downloaded on the build machines).
Every click is on the held-out slices 15-30 (the model was trained on slices 0-14).

    xvfb-run -a python docs/make_screenshots.py        # writes docs/images/*.png
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "images"


def main() -> int:
    # A fresh embeddings cache, so the precompute (and its progress bar) really runs.
    os.environ["NAPARI_SAM_STACK_CACHE"] = tempfile.mkdtemp(prefix="sam-stack-cache-")
    # Load the model before napari creates its GL context (see _widget/_compat.py).
    from napari_sam_stack import load_model

    model = load_model("nss_nuclei_micro", device="cpu")

    import napari
    import tifffile
    from qtpy.QtWidgets import QApplication

    from napari_sam_stack._widget._sample import DATA

    OUT.mkdir(parents=True, exist_ok=True)
    gt = tifffile.imread(DATA / "mask3d.tif")
    viewer = napari.Viewer(title="napari-sam-stack")
    viewer.window._qt_window.resize(1500, 950)
    viewer.open_sample("napari-sam-stack", "nuclei_real")
    _, widget = viewer.window.add_plugin_dock_widget("napari-sam-stack", "Segment Anything (stack)")
    widget.set_model(model)

    def settle():
        widget.wait(timeout_ms=480_000)
        for _ in range(5):
            QApplication.processEvents()

    def shot(name):
        settle()
        viewer.screenshot(str(OUT / name), canvas_only=False, flash=False)
        print("wrote", OUT / name)

    # an object near the middle of the stack: click on it, plus a negative click beside it
    z = 15
    ids, counts = np.unique(gt[z][gt[z] > 0], return_counts=True)
    obj = int(ids[np.argmax(counts)])
    rr, cc = np.nonzero(gt[z] == obj)
    viewer.dims.set_current_step(0, z)
    viewer.camera.zoom *= 1.0
    widget.points_layer.add([z, rr.mean(), cc.mean()])
    settle()
    widget.toggle_polarity()
    widget.points_layer.add([z, min(gt.shape[1] - 1, rr.max() + 4), cc.mean()])
    shot("01_click_preview.png")

    # propagate through the stack, then look at another slice
    widget.propagate()
    settle()
    viewer.dims.set_current_step(0, z + 3)
    shot("02_propagated.png")

    # commit: a labels layer with a new id; then a box prompt for the next object
    widget.commit()
    settle()
    widget.toggle_polarity()
    others = [i for i in ids if i != obj]
    rr, cc = np.nonzero(gt[z] == int(others[0]))
    viewer.dims.set_current_step(0, z)
    rect = np.array([[z, rr.min() - 1, cc.min() - 1], [z, rr.min() - 1, cc.max() + 1],
                     [z, rr.max() + 1, cc.max() + 1], [z, rr.max() + 1, cc.min() - 1]], float)
    widget.boxes_layer.add_rectangles(rect)
    shot("03_commit_and_box.png")

    # refine an existing label: ground truth loaded as a labels layer, one nucleus as the current object
    truth = viewer.add_labels(gt, name="ground truth (stardist)")
    widget.target_layer = truth
    truth.selected_label = int(others[1])
    widget.edit_label()
    truth.contour = 1  # outlines, so the loaded object (cyan preview) shows through
    viewer.layers["SAM labels"].visible = False
    viewer.layers.selection.active = widget.points_layer
    shot("04_edit_existing_label.png")

    # many objects: nuclei clicked on their own slices, propagated together, committed; one edited again
    truth.visible = False
    labels = viewer.layers["SAM labels"]
    labels.visible = True
    widget.target_layer = labels
    viewer.layers.selection.active = widget.points_layer
    seeds = []
    for zz in (17, 21, 25):
        found = [i for i in np.unique(gt[zz]) if i and i not in seeds]
        if found:
            seeds.append(int(found[0]))
            rr, cc = np.nonzero(gt[zz] == found[0])
            viewer.dims.set_current_step(0, zz)
            widget.points_layer.add([zz, rr.mean(), cc.mean()])
            settle()
            widget.next_object()
    widget.start_spin.setValue(15)
    widget.stop_spin.setValue(30)
    widget.propagate_all()
    settle()
    widget.commit_all()
    settle()
    first = widget.objects_panel.ids()[1]
    widget.select_object(first)
    zz = widget.current_index()
    widget.toggle_polarity()
    widget.points_layer.add([min(gt.shape[0] - 1, zz + 2), 5, 5])  # a negative click: edited since commit
    settle()
    widget.toggle_polarity()
    widget.scroll.ensureWidgetVisible(widget.objects_box)
    shot("06_objects_panel.png")

    # the embeddings precompute of a new stack: progress bar and Cancel while the viewer stays live
    viewer.layers.clear()
    viewer.open_sample("napari-sam-stack", "nuclei")
    widget.image_layer = viewer.layers["nuclei (synthetic)"]
    viewer.reset_view()
    viewer.window._qt_window.statusBar()._toggle_activity_dock(True)
    widget.compute_embeddings()
    while not widget.session.embeddings.is_computed(5):
        QApplication.processEvents()
    for _ in range(50):
        QApplication.processEvents()
    viewer.screenshot(str(OUT / "05_embeddings_progress.png"), canvas_only=False, flash=False)
    print("wrote", OUT / "05_embeddings_progress.png")
    widget.cancel()
    settle()
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
