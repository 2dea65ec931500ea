"""The demo: napari with the sample stack and the widget docked; the model loads in the background."""

from __future__ import annotations

import sys
import tempfile

PLUGIN = "napari-sam-stack"


def _manifest():
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    return pm.get_manifest(PLUGIN)


def _weights_hint(args) -> str | None:
    """What to tell a user whose weights are not downloaded yet (None when they are here)."""
    from ..models import model_spec, weights_dir

    spec = model_spec(args.model)
    target = weights_dir() / spec.filename
    if spec.bundled or target.is_file():
        return None
    how = f"config={spec.config!r}" if spec.family == "sam2" else f"model_type={spec.model_type!r}"
    return (
        f"Downloading {args.model} from {spec.url} to {target}. Without internet access this fails: then download "
        f"the file elsewhere and run `tox -e demo -- --checkpoint /path/to/{spec.filename}`, pick "
        f"'local checkpoint…' in the widget, or call load_model(checkpoint=..., {how}) in the console. "
        "`tox -e demo -- --test-model` shows the loop with random weights."
    )


OFFLINE_MODEL = "nss_nuclei_micro"  # shipped in the package: real nuclei segmented with no download


def _reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether the host of ``url`` accepts a connection (a quick offline check, no download)."""
    import socket
    from urllib.parse import urlparse

    try:
        socket.create_connection((urlparse(url).hostname, 443), timeout=timeout).close()
    except (OSError, TypeError, UnicodeError):
        return False
    return True


EXAMPLE_HINT = ("The shipped nuclei model segmented the nucleus under the example click (preview layer). Click on "
                "any other nucleus, then 'Propagate' to follow it through the stack.")


def show_example(viewer, widget, model_name: str) -> tuple[int, int, int]:
    """Load the shipped model, go to the middle slice and click once on its largest nucleus.

    The click lands at the nucleus's deepest pixel (the farthest from its edge) in the ground truth that ships
    with the sample; returns that (z, y, x). The preview then shows the model's mask: a new user sees real
    nuclei segmented before clicking anything.
    """
    import numpy as np
    import tifffile
    from napari.utils.notifications import show_info
    from scipy.ndimage import distance_transform_edt

    from ..models import load_model
    from ._sample import DATA

    device = widget.device_combo.currentText()
    widget.set_model(load_model(model=model_name, device=None if device == "auto" else device))
    truth = tifffile.imread(DATA / "mask3d.tif")
    z = truth.shape[0] // 2
    ids, areas = np.unique(truth[z][truth[z] > 0], return_counts=True)
    depth = distance_transform_edt(truth[z] == ids[np.argmax(areas)])
    y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
    viewer.reset_view()
    viewer.dims.set_current_step(0, z)
    widget.points_layer.add([[z, y, x]])
    show_info(EXAMPLE_HINT)
    return z, int(y), int(x)


HEADLESS_HINT = ("on a machine without one, `xvfb-run -a tox -e demo -- --screenshot demo.png` runs it under a "
                 "virtual X server and saves the window as a picture")


def run_demo(args) -> int:
    from ._display import gui_problem

    problem = gui_problem(headless_hint=HEADLESS_HINT)  # Qt would abort the process (core dump) instead
    if problem:
        print(f"napari-sam-stack demo: napari cannot open its window here: {problem}", file=sys.stderr)
        return 2

    import napari
    from napari.utils.notifications import show_info

    from ..models import model_spec
    from ._compat import guard_llvm_clash
    from ._controls import LOCAL

    manifest = _manifest()
    viewer = napari.Viewer(title="napari-sam-stack demo")
    synthetic = list(viewer.open_sample(PLUGIN, manifest.contributions.sample_data[0].key))
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, manifest.contributions.widgets[0].display_name)
    if args.device:
        widget.device_combo.setCurrentText(args.device)

    if args.test_model:
        from ..testing import load_tiny_sam2

        guard_llvm_clash()
        widget.set_model(load_tiny_sam2(tempfile.mkdtemp(prefix="sam-stack-demo-")))
        show_info("Random-weight test model loaded: the plumbing works, the masks mean nothing.")
    elif args.checkpoint:
        widget.model_combo.setCurrentText(LOCAL)
        widget.ckpt_edit.setText(args.checkpoint)
        widget.config_edit.setText(args.config or args.model_type or "")
        widget.load_model()
    else:
        hint = _weights_hint(args)
        if hint and not _reachable(model_spec(args.model).url):  # offline: the shipped nuclei model instead
            hint = f"{args.model} cannot be downloaded here (offline): using the shipped {OFFLINE_MODEL} model."
            args.model = OFFLINE_MODEL
        if hint:
            print(hint, file=sys.stderr)
            show_info(hint)
        if model_spec(args.model).bundled:  # on disk already: shown at work on the real nuclei it was trained for
            for layer in synthetic:
                viewer.layers.remove(layer)
            viewer.open_sample(PLUGIN, manifest.contributions.sample_data[-1].key)  # real stardist nuclei
            show_example(viewer, widget, args.model)
        else:
            widget.model_combo.setCurrentText(args.model)
            widget.load_model()  # in the background; a failed download shows its message as a notification

    if args.screenshot:
        from qtpy.QtCore import QTimer

        def shoot():
            widget.wait()  # the example's preview is drawn before the picture is taken
            viewer.screenshot(args.screenshot, canvas_only=False)
            viewer.close()

        QTimer.singleShot(2000, shoot)
    napari.run()
    return 0
