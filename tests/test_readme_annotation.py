"""The scripting example of docs/annotation.md (several objects through Annotation), run as written.

The block is read from the page, so the docs and this test cannot drift. No pretrained weights
exist here: ``load_model("sam2.1_hiera_tiny")`` gives the random-weight tiny SAM 2, itself loaded
from a checkpoint file through the real loader; the stack is the real nuclei stack (first 8 slices).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

DOC = Path(__file__).resolve().parents[1] / "docs" / "annotation.md"
MARK = "<!-- example: tests/test_readme_annotation.py runs this block -->"


def example() -> str:
    text = DOC.read_text()
    assert MARK in text, "the tested example of docs/annotation.md lost its marker"
    m = re.search(r"```python\n(.*?)```", text[text.index(MARK):], re.S)
    assert m is not None
    return m.group(1)


def test_docs_example_runs(tmp_path, monkeypatch, sam2_model):
    import tifffile

    import napari_sam_stack as nss
    from napari_sam_stack import models

    data = Path(nss.__file__).parent / "data" / "img3d.tif"
    tifffile.imwrite(tmp_path / "nuclei.tif", tifffile.imread(data)[:8])
    real = models.load_model

    def load(name=None, **kw):
        return sam2_model if name == "sam2.1_hiera_tiny" else real(name, **kw)

    monkeypatch.setattr(models, "load_model", load)
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(example(), str(DOC), "exec"), ns)
    a, b = ns["a"], ns["b"]
    assert list(a.objects) == [1, 2, 3]
    assert all(o.status == "committed" for o in a.objects.values())
    assert a.objects[2].prompted() == [3, 4]
    assert set(np.unique(a.labels)) <= {0, 1, 2, 3} and a.labels.any()
    assert np.array_equal(tifffile.imread(tmp_path / "labels.tif"), a.labels)
    assert (tmp_path / "nuclei.sam" / "napari-sam-stack-project.json").is_file()
    assert a.autosave_path.is_dir()  # commits were autosaved (the user cache of this test)
