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
            for layer in synthetic:  # the nuclei model is shown on real nuclei, not over the synthetic stack
                viewer.layers.remove(layer)
            viewer.open_sample(PLUGIN, manifest.contributions.sample_data[-1].key)  # real stardist nuclei
        if hint:
            print(hint, file=sys.stderr)
            show_info(hint)
        widget.model_combo.setCurrentText(args.model)
        widget.load_model()  # in the background; a failed download shows its message as a notification

    if args.screenshot:
        from qtpy.QtCore import QTimer

        def shoot():
            viewer.screenshot(args.screenshot, canvas_only=False)
            viewer.close()

        QTimer.singleShot(2000, shoot)
    napari.run()
    return 0
