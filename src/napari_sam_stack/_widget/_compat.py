"""Work around a crash between Mesa's OpenGL and Triton, both of which carry LLVM.

On Linux with a Mesa OpenGL driver (llvmpipe under Xvfb, radeonsi, ...) napari's GL
context maps ``libLLVM``; importing Triton afterwards (``torchvision.ops`` pulls in
``torch._dynamo``, which imports ``triton`` when it is installed) loads a second LLVM
and segfaults the process. Neither the models nor the widget need Triton (it only
backs ``torch.compile`` GPU kernels), so when libLLVM is already mapped and Triton is
not loaded yet, Triton is marked unavailable: torch then sees it as not installed.
"""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("napari_sam_stack")


def guard_llvm_clash() -> bool:
    """Mark Triton unavailable if loading it now would crash; True when it did so."""
    if "triton" in sys.modules:
        return False
    try:
        with open("/proc/self/maps") as f:
            mapped = "libLLVM" in f.read()
    except OSError:  # not Linux
        return False
    if mapped:
        sys.modules["triton"] = None  # `import triton` now raises ImportError
        log.info("napari-sam-stack: OpenGL's libLLVM is loaded; Triton disabled to avoid an LLVM clash")
    return mapped
