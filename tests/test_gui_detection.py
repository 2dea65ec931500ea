"""Where Qt cannot open a window the suite skips its GUI tests with one line and runs the rest (never aborts);
the tox set-up step installs the system packages GUI tests need when it may."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from napari_sam_stack._widget import _display

TESTS = Path(__file__).parent
TINY_SUITE = '''
import pytest


def test_core_uses_a_suite_fixture(stack_u8):
    assert stack_u8.shape == (6, 45, 71)


def test_core_plain():
    assert sorted([3, 1, 2]) == [1, 2, 3]


@pytest.mark.gui
def test_gui_by_marker(make_napari_viewer):
    make_napari_viewer()


def test_gui_by_fixture(qtbot):  # no marker: a Qt fixture is enough to need a display
    assert qtbot is not None
'''


def _headless_env(**extra) -> dict:
    """This environment without any display: no DISPLAY/XAUTHORITY/WAYLAND_DISPLAY and no Xvfb on PATH."""
    env = {k: v for k, v in os.environ.items()
           if k not in {"DISPLAY", "XAUTHORITY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM", "NSS_REQUIRE_GUI"}}
    env["PATH"] = os.pathsep.join(d for d in env.get("PATH", "").split(os.pathsep)
                                  if d and not (Path(d) / "Xvfb").exists())
    env["PYTHONPATH"] = str(TESTS)  # `-p conftest` below: the suite's own conftest, as a plugin
    env.update(extra)
    return env


def _run_tiny_suite(tmp_path, *args, **env):
    (tmp_path / "test_tiny.py").write_text(TINY_SUITE)
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    gui: needs an X server\n")
    assert shutil.which("Xvfb", path=_headless_env()["PATH"]) is None
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider", "-q", *args, "test_tiny.py"],
        cwd=tmp_path, env=_headless_env(**env), capture_output=True, text=True, timeout=300,
    )


def test_no_display_skips_gui_tests_with_one_line_and_runs_core_tests(tmp_path):
    r = _run_tiny_suite(tmp_path, "-ra")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]  # not -6 (Qt's abort)
    lines = [ln for ln in out.splitlines() if "GUI tests skipped" in ln]
    assert len(lines) == 1, out[-3000:]
    assert lines[0].startswith("SKIPPED [2] ")  # both GUI tests, the marked one and the qtbot one, counted
    assert "no X server: DISPLAY is unset and Xvfb is not on PATH; install it with:" in lines[0]
    assert re.search(r"apt-get install -y xvfb( |$)", lines[0])
    assert int(re.search(r"(\d+) passed", out).group(1)) == 2
    assert "2 skipped" in out


def test_unreachable_display_is_found_by_the_probe_and_summarised_without_rs(tmp_path):
    dead = next(f":{n}" for n in range(987, 1100) if not Path(f"/tmp/.X11-unix/X{n}").exists())
    r = _run_tiny_suite(tmp_path, "-rN", DISPLAY=dead)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    lines = [ln for ln in out.splitlines() if "GUI tests skipped" in ln]
    assert len(lines) == 1 and lines[0].startswith("GUI tests skipped (2): Qt cannot open a window"), out[-3000:]
    assert f"could not connect to display {dead}" in lines[0]
    assert "2 passed, 2 skipped" in out


def test_ci_mode_fails_instead_of_skipping(tmp_path):
    r = _run_tiny_suite(tmp_path, NSS_REQUIRE_GUI="1")
    out = r.stdout + r.stderr
    assert r.returncode == pytest.ExitCode.USAGE_ERROR, out[-3000:]
    assert "NSS_REQUIRE_GUI=1 but the 2 GUI tests cannot run: no X server" in out
    assert "passed" not in out


def test_a_plugin_that_cannot_load_names_the_library_error(tmp_path, monkeypatch):
    broken = tmp_path / "libqxcb.so"
    broken.write_bytes(b"not a shared object")
    monkeypatch.setattr(_display, "_xcb_plugin", lambda binding: broken)
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.delenv("QT_QPA_PLATFORM", raising=False)
    problem = _display.gui_problem()
    assert problem.startswith("Qt's xcb platform plugin cannot load (")
    assert str(broken) in problem and "install its libraries: " in problem and "apt-get install -y" in problem


@pytest.mark.skipif(not shutil.which("dpkg-query"), reason="dpkg-query: Debian/Ubuntu only")
def test_missing_packages_agrees_with_dpkg():
    missing = _display.missing_packages()
    for pkg in _display.SYSTEM_PACKAGES:
        status = subprocess.run(["dpkg-query", "-W", "-f=${db:Status-Status}", pkg], capture_output=True, text=True)
        assert (pkg in missing) == (status.stdout != "installed"), pkg


def test_a_renamed_library_that_provides_the_old_name_counts_as_installed(monkeypatch):
    monkeypatch.setattr(_display.shutil, "which", lambda name: "/usr/bin/" + name)
    rows = [f"installed|{p}|" for p in _display.SYSTEM_PACKAGES if p not in {"libglib2.0-0", "xvfb", "libgl1"}]
    rows += ["installed|libglib2.0-0t64|libglib2.0-0 (= 2.80.0-6ubuntu1), libgio-2.0-0",
             "config-files|xvfb|", "installed|libgl1-dev|"]

    def dpkg_query(cmd, **kw):
        assert cmd[:2] == ["dpkg-query", "-W"]
        return subprocess.CompletedProcess(cmd, 0, stdout="\n".join(rows) + "\n", stderr="")
    assert _display.missing_packages(run=dpkg_query) == ["xvfb", "libgl1"]


class _Apt:
    """Stands in for subprocess.run: records commands; `sudo -n true` answers `sudo_ok`, apt-get `apt_rc`."""

    def __init__(self, sudo_ok=True, apt_rc=0):
        self.sudo_ok, self.apt_rc, self.calls = sudo_ok, apt_rc, []

    def __call__(self, cmd, **kw):
        self.calls.append((cmd, kw.get("env")))
        rc = (0 if self.sudo_ok else 1) if cmd == ["sudo", "-n", "true"] else self.apt_rc
        return subprocess.CompletedProcess(cmd, rc, stdout="", stderr="E: Unable to fetch some archives")


@pytest.fixture
def debian(monkeypatch):
    """A Debian machine where xvfb and libxcb-cursor0 are missing; `root` and `sudo` are set per test."""
    monkeypatch.setattr(_display.sys, "platform", "linux")
    monkeypatch.setattr(_display, "missing_packages", lambda: ["xvfb", "libxcb-cursor0"])
    monkeypatch.delenv("NSS_NO_SYSTEM_DEPS", raising=False)
    tools = {"apt-get": "/usr/bin/apt-get", "sudo": "/usr/bin/sudo"}
    monkeypatch.setattr(_display.shutil, "which", lambda name: tools.get(name))

    def setup(root, sudo=True):
        monkeypatch.setattr(_display, "_root", lambda: root)
        if not sudo:
            tools.pop("sudo")
    return setup


def _install(**kw):
    said = []
    rc = _display.install(say=said.append, **kw)
    return rc, said


def test_root_installs_the_missing_packages(debian):
    debian(root=True)
    apt = _Apt()
    rc, said = _install(run=apt)
    assert rc == 0
    assert [c for c, _ in apt.calls] == [["apt-get", "update", "-qq"],
                                          ["apt-get", "install", "-y", "-qq", "xvfb", "libxcb-cursor0"]]
    assert all(env["DEBIAN_FRONTEND"] == "noninteractive" for _, env in apt.calls)
    assert said == ["system packages for the GUI tests: installing xvfb libxcb-cursor0"]


def test_passwordless_sudo_installs_and_dry_run_only_prints(debian):
    debian(root=False)
    apt = _Apt(sudo_ok=True)
    _install(run=apt)
    sudo = ["sudo", "-n", "DEBIAN_FRONTEND=noninteractive"]
    assert [c for c, _ in apt.calls][1:] == [[*sudo, "apt-get", "update", "-qq"],
                                              [*sudo, "apt-get", "install", "-y", "-qq", "xvfb", "libxcb-cursor0"]]
    dry = _Apt(sudo_ok=True)
    rc, said = _install(run=dry, dry_run=True)
    assert rc == 0 and [c for c, _ in dry.calls] == [["sudo", "-n", "true"]]
    assert said[1:] == ["would run: sudo -n DEBIAN_FRONTEND=noninteractive apt-get update -qq",
                        "would run: sudo -n DEBIAN_FRONTEND=noninteractive apt-get install -y -qq xvfb libxcb-cursor0"]


@pytest.mark.parametrize("sudo", [True, False], ids=["sudo-needs-password", "no-sudo"])
def test_without_root_or_sudo_it_says_what_to_run_and_goes_on(debian, sudo):
    debian(root=False, sudo=sudo)
    apt = _Apt(sudo_ok=False)
    rc, said = _install(run=apt)
    assert rc == 0
    assert all(c == ["sudo", "-n", "true"] for c, _ in apt.calls)  # no apt-get
    assert len(said) == 1
    assert "no root or passwordless sudo" in said[0] and "GUI tests will be skipped" in said[0]
    assert said[0].endswith("sudo apt-get install -y xvfb libxcb-cursor0")


def test_nothing_missing_or_opted_out_runs_nothing(debian, monkeypatch):
    debian(root=True)
    monkeypatch.setenv("NSS_NO_SYSTEM_DEPS", "1")
    apt = _Apt()
    rc, said = _install(run=apt)
    assert rc == 0 and apt.calls == [] and "NSS_NO_SYSTEM_DEPS=1" in said[0]
    monkeypatch.delenv("NSS_NO_SYSTEM_DEPS")
    monkeypatch.setattr(_display, "missing_packages", lambda: [])
    assert _install(run=apt) == (0, []) and apt.calls == []


def test_a_failed_apt_get_is_reported_and_does_not_stop_the_run(debian):
    debian(root=True)
    rc, said = _install(run=_Apt(apt_rc=100))
    assert rc == 0
    assert said[-1].startswith("system packages for the GUI tests: `apt-get update -qq` failed (E: Unable to fetch")


def test_not_debian_says_so(monkeypatch):
    monkeypatch.setattr(_display.sys, "platform", "darwin")
    rc, said = _install(run=_Apt())
    assert rc == 0 and "not a Debian/Ubuntu system" in said[0]
