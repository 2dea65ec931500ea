"""The demo: napari with the sample stack and the widget docked, a model loaded if possible."""

from __future__ import annotations

import sys
import tempfile

PLUGIN = "napari-sam-stack"


def _manifest():
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    return pm.get_manifest(PLUGIN)


def run_demo(args) -> int:
    import napari
    from napari.utils.notifications import show_error, show_info

    from ..errors import SamStackError

    manifest = _manifest()
    viewer = napari.Viewer(title="napari-sam-stack demo")
    viewer.open_sample(PLUGIN, manifest.contributions.sample_data[0].key)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, manifest.contributions.widgets[0].display_name)

    try:
        if args.test_model:
            from ..testing import load_tiny_sam2

            model = load_tiny_sam2(tempfile.mkdtemp(prefix="sam-stack-demo-"))
            show_info("Random-weight test model loaded: the plumbing works, the masks mean nothing.")
        else:
            from ..cli import _load

            model = _load(args)
        widget.set_model(model)
    except SamStackError as e:
        msg = (
            f"No model loaded: {e}\n\nThe demo still runs: choose 'local checkpoint…' in the widget, or restart with "
            "`tox -e demo -- --checkpoint /path/to/sam2.1_hiera_tiny.pt` (or `-- --test-model` for random weights)."
        )
        print(msg, file=sys.stderr)
        show_error(msg)

    if args.screenshot:
        from qtpy.QtCore import QTimer

        def shoot():
            viewer.screenshot(args.screenshot, canvas_only=False)
            viewer.close()

        QTimer.singleShot(1500, shoot)
    napari.run()
    return 0
