"""Shared fixtures: random-weight tiny models saved as checkpoints and loaded through load_model."""

from __future__ import annotations

import numpy as np
import pytest

# Load Triton (torchvision.ops -> torch._dynamo -> triton) before any test opens an OpenGL
# context: Mesa's libLLVM and Triton's LLVM segfault when Triton comes second (see
# napari_sam_stack/_widget/_compat.py), so the test order must not decide it.
import torchvision.ops  # noqa: E402,F401


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
