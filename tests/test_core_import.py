"""The core must work where napari and Qt are not installed, and importing the package must stay light."""

from __future__ import annotations

import subprocess
import sys
import textwrap

BLOCK = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui", "superqt", "vispy")


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)


def test_core_modules_import_without_napari_or_qt():
    r = _run(f"""
        import importlib, pkgutil, sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {BLOCK!r}:
                    raise ImportError("blocked for this test: " + name)
        sys.meta_path.insert(0, Block())
        import napari_sam_stack as pkg
        names = [m.name for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")
                 if "._widget" not in m.name]
        assert len(names) >= 8, names
        for n in names:
            importlib.import_module(n)
        print("imported", len(names))
    """)
    assert r.returncode == 0, r.stderr
    assert "imported" in r.stdout


def test_import_is_light():
    r = _run("""
        import sys
        import napari_sam_stack as nss
        nss.available_models()
        heavy = [m for m in ("torch", "napari", "qtpy", "PyQt6", "sam2", "segment_anything") if m in sys.modules]
        print(heavy)
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
