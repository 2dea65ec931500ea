"""Can Qt open a window here? Answered without importing Qt, so a headless machine gets one line, not an abort.

Qt aborts the whole process (SIGABRT, "could not connect to display") when it has no X server or cannot load its
xcb platform plugin; pytest-qt's ``qapp`` and ``napari.Viewer()`` both hit that. The test suite
(tests/conftest.py) and the demo ask :func:`gui_problem` first and skip / refuse with its one-line answer.

Run as a script, this module is the tox ``tests`` env's set-up step: on Debian/Ubuntu it installs the system
packages below when some are missing and root or passwordless sudo is at hand, and otherwise says what to run::

    python src/napari_sam_stack/_widget/_display.py install [--dry-run]

It imports only the standard library (it runs before the package is installed).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

# Debian/Ubuntu packages the GUI tests need: the virtual X server, and the libraries of Qt's xcb platform
# plugin plus OpenGL/EGL for napari's canvas. The one copy of this list (tox's tests env and CI install it).
SYSTEM_PACKAGES = (
    "xvfb", "libxcb-cursor0", "libxkbcommon-x11-0", "libxcb-icccm4", "libxcb-image0", "libxcb-keysyms1",
    "libxcb-randr0", "libxcb-render-util0", "libxcb-xinerama0", "libxcb-shape0", "libxcb-xfixes0",
    "libegl1", "libgl1", "libdbus-1-3", "libfontconfig1", "libglib2.0-0",
)
_BINDINGS = {"pyqt5": "PyQt5", "pyside2": "PySide2", "pyqt6": "PyQt6", "pyside6": "PySide6"}  # qtpy's fallback order
PROBE_TIMEOUT_S = 60
# Run in a child process: load the xcb plugin's libraries, then start a QApplication. Qt aborts the child, not us.
_PROBE = """
import ctypes, sys
if sys.argv[1]:
    try:
        ctypes.CDLL(sys.argv[1])
    except OSError as e:
        print("LOAD", e, flush=True)
        sys.exit(3)
from qtpy.QtWidgets import QApplication
app = QApplication(["napari-sam-stack-probe"])
print("OK", app.platformName(), flush=True)
"""


def missing_packages(run=subprocess.run) -> list[str] | None:
    """The packages of :data:`SYSTEM_PACKAGES` that are not installed; None where dpkg is not available."""
    if not shutil.which("dpkg-query"):
        return None
    r = run(["dpkg-query", "-W", "-f=${db:Status-Status}|${Package}|${Provides}\n"],
                       capture_output=True, text=True)
    have = set()
    for line in r.stdout.splitlines():
        status, name, provides = (line.split("|") + ["", ""])[:3]
        if status == "installed":  # a renamed library (Ubuntu 24.04's libglib2.0-0t64) provides the old name
            have.update([name], (p.split()[0] for p in provides.split(",") if p.strip()))
    return [p for p in SYSTEM_PACKAGES if p not in have]


def _root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def install_hint(packages=None, also=()) -> str:
    """The command that installs ``packages`` (default: the missing ones, else all of them) and ``also``."""
    if packages is None:
        packages = missing_packages() or SYSTEM_PACKAGES  # nothing missing by dpkg's account: name them all
    packages = [*also, *(p for p in packages if p not in also)]
    return ("" if _root() else "sudo ") + "apt-get install -y " + " ".join(packages)


def qt_binding() -> str | None:
    """The Qt binding qtpy will import (respecting ``QT_API``), found without importing it."""
    wanted = os.environ.get("QT_API", "").lower()
    names = ([_BINDINGS[wanted]] if wanted in _BINDINGS else []) + list(_BINDINGS.values())
    return next((n for n in names if importlib.util.find_spec(n) is not None), None)


def _xcb_plugin(binding: str) -> Path | None:
    origin = importlib.util.find_spec(binding).submodule_search_locations
    for root in origin or ():
        for path in Path(root).glob("**/platforms/libqxcb.so"):
            return path
    return None


def gui_problem(xvfb_helps: bool = False, headless_hint: str | None = None) -> str | None:
    """None when Qt can open a window in this process's environment, else one line: what is missing, how to get it.

    ``xvfb_helps``: the caller starts Xvfb itself when it is on PATH (the test suite, via pytest-xvfb), so then a
    missing DISPLAY is no problem. ``headless_hint``: what to suggest where there is no display at all.
    When the static checks pass, one short child process (the probe) starts a QApplication to be sure.
    """
    binding = qt_binding()
    if binding is None:
        return "no Qt binding is installed (pip install 'napari[pyqt6]')"
    platform = os.environ.get("QT_QPA_PLATFORM", "")
    xcb = sys.platform.startswith("linux") and platform in ("", "xcb") and not os.environ.get("WAYLAND_DISPLAY")
    plugin = _xcb_plugin(binding) if xcb else None
    if xcb and plugin is None:
        return f"{binding} has no xcb platform plugin (reinstall it: pip install --force-reinstall {binding})"
    if xcb and not os.environ.get("DISPLAY") and not (xvfb_helps and shutil.which("Xvfb")):
        if xvfb_helps:
            return f"no X server: DISPLAY is unset and Xvfb is not on PATH; install it with: {install_hint(also=['xvfb'])}"
        how = headless_hint or "run it under a virtual X server: xvfb-run -a COMMAND"
        if not shutil.which("xvfb-run"):
            how += f" (xvfb-run comes with: {install_hint(also=['xvfb'])})"
        return f"no display: DISPLAY is unset; {how}"
    try:
        r = subprocess.run([sys.executable, "-c", _PROBE, str(plugin or "")], capture_output=True, text=True,
                           timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"Qt did not start within {PROBE_TIMEOUT_S} s (DISPLAY={os.environ.get('DISPLAY')!r} not answering?)"
    if r.returncode == 0 and "OK " in r.stdout:
        return None
    if r.stdout.startswith("LOAD"):
        return f"Qt's xcb platform plugin cannot load ({r.stdout[5:].strip()}); install its libraries: {install_hint()}"
    said = [ln.strip() for ln in r.stderr.splitlines() if ln.strip()]
    first = next((ln for ln in said if ln.startswith("qt.qpa")), said[0] if said else f"exit status {r.returncode}")
    return f"Qt cannot open a window (DISPLAY={os.environ.get('DISPLAY')!r}): {first}"


def install(dry_run: bool = False, run=subprocess.run, say=print) -> int:
    """Install the missing :data:`SYSTEM_PACKAGES` when root or passwordless sudo is here; never fails the caller.

    Where nothing can be installed (not Debian/Ubuntu, no root/sudo, ``NSS_NO_SYSTEM_DEPS=1``) it says so in one
    line and returns 0: the GUI tests are then skipped with the reason, the other tests still run.
    """
    tag = "system packages for the GUI tests:"
    if not sys.platform.startswith("linux") or not shutil.which("apt-get"):
        say(f"{tag} not a Debian/Ubuntu system, nothing installed (GUI tests need an X server, see docs/install.md)")
        return 0
    missing = missing_packages()
    if not missing:
        return 0
    if os.environ.get("NSS_NO_SYSTEM_DEPS") == "1":
        say(f"{tag} {' '.join(missing)} missing; NSS_NO_SYSTEM_DEPS=1, so not installing them: {install_hint(missing)}")
        return 0
    if _root():
        sudo = []
    elif shutil.which("sudo") and run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        sudo = ["sudo", "-n", "DEBIAN_FRONTEND=noninteractive"]  # sudo resets the environment
    else:
        say(f"{tag} {' '.join(missing)} missing and no root or passwordless sudo to install them; GUI tests will be "
            f"skipped. Install them with: {install_hint(missing)}")
        return 0
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    steps = [[*sudo, "apt-get", "update", "-qq"], [*sudo, "apt-get", "install", "-y", "-qq", *missing]]
    say(f"{tag} installing {' '.join(missing)}")
    for cmd in steps:
        if dry_run:
            say("would run: " + " ".join(cmd))
            continue
        r = run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if r.returncode != 0:
            err = (r.stderr or "").strip().splitlines()
            say(f"{tag} `{' '.join(cmd)}` failed ({err[-1] if err else r.returncode}); GUI tests may be skipped")
            return 0
    return 0


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="Check or install what napari's GUI needs on this machine.")
    sub = p.add_subparsers(dest="cmd", required=True)
    inst = sub.add_parser("install", help="apt-get install the missing system packages (root or passwordless sudo)")
    inst.add_argument("--dry-run", action="store_true", help="print the apt-get commands instead of running them")
    sub.add_parser("check", help="say whether Qt can open a window here (exit 1 when not)")
    args = p.parse_args(argv)
    if args.cmd == "install":
        return install(dry_run=args.dry_run)
    problem = gui_problem()
    print(problem or "Qt can open a window here")
    return 1 if problem else 0


if __name__ == "__main__":
    sys.exit(main())
