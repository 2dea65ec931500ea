"""Shared fixtures: random-weight tiny models saved as checkpoints and loaded through load_model.

Also decides whether the GUI tests can run here (see the hooks below).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

# Load Triton (torchvision.ops -> torch._dynamo -> triton) before any test opens an OpenGL
# context: Mesa's libLLVM and Triton's LLVM segfault when Triton comes second (see
# napari_sam_stack/_widget/_compat.py), so the test order must not decide it.
import torchvision.ops  # noqa: E402,F401

# GUI tests (marker `gui`, or any test using a Qt fixture) run under pytest-xvfb's X server. Where Qt cannot open
# a window (no DISPLAY and no Xvfb, missing xcb libraries) Qt would abort the whole run, so we ask first -- in a child
# process, without importing Qt here -- and skip them with one line that says what is missing and how to get it.
# NSS_REQUIRE_GUI=1 (set by .ci/run) makes that an error instead.
GUI_FIXTURES = frozenset({"make_napari_viewer", "qtbot", "qapp", "qtmodeltester"})
_GUI = pytest.StashKey[tuple]()  # (problem or None, number of GUI tests)


def _needs_gui(item) -> bool:
    return item.get_closest_marker("gui") is not None or not GUI_FIXTURES.isdisjoint(getattr(item, "fixturenames", ()))


def pytest_collection_modifyitems(config, items):
    gui = [item for item in items if _needs_gui(item)]
    problem = None
    if gui:
        from napari_sam_stack._widget._display import gui_problem

        xvfb = config.pluginmanager.hasplugin("xvfb") and not config.getoption("--no-xvfb", False)
        problem = gui_problem(xvfb_helps=xvfb)  # pytest-xvfb has already started Xvfb when it could
        if problem and os.environ.get("NSS_REQUIRE_GUI") == "1":
            pytest.exit(f"NSS_REQUIRE_GUI=1 but the {len(gui)} GUI tests cannot run: {problem}",
                        returncode=pytest.ExitCode.USAGE_ERROR)
    config.stash[_GUI] = (problem, len(gui))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    problem, _ = item.config.stash.get(_GUI, (None, 0))
    if problem and _needs_gui(item):  # before any fixture: qapp would abort the process
        pytest.skip(f"GUI tests skipped: {problem}")  # raised here, so -rs folds them into one counted line


def pytest_terminal_summary(terminalreporter, config):
    problem, n = config.stash.get(_GUI, (None, 0))
    chars = config.option.reportchars or ""
    if problem and not any(c in chars for c in "saA"):  # -rs already printed "SKIPPED [n] ...: GUI tests skipped"
        terminalreporter.write_line(f"GUI tests skipped ({n}): {problem}", yellow=True)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own per-user cache, so nothing leaks between tests or into ~/.cache."""
    monkeypatch.setenv("NAPARI_SAM_STACK_CACHE", str(tmp_path / "user-cache"))


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def sam2_files(model_dir):
    from napari_sam_stack.testing import tiny_sam2_checkpoint

    return tiny_sam2_checkpoint(model_dir / "sam2")


@pytest.fixture(scope="session")
def sam1_file(model_dir):
    from napari_sam_stack.testing import tiny_sam1_checkpoint

    return tiny_sam1_checkpoint(model_dir / "sam1")


@pytest.fixture(scope="session")
def sam2_model(sam2_files):
    from napari_sam_stack import load_model

    ckpt, config = sam2_files
    return load_model(checkpoint=ckpt, config=config, device="cpu")


@pytest.fixture(scope="session")
def sam1_model(sam1_file):
    from napari_sam_stack import load_model

    return load_model(checkpoint=sam1_file, model_type="auto", device="cpu")


@pytest.fixture
def stack_u8():
    """A non-square uint8 stack (6 slices of 45 x 71)."""
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, (6, 45, 71), dtype=np.uint8)
