"""Autosave: after every commit and on a timer, atomic, under the user cache keyed by the image;
a process killed (SIGKILL) in the middle of an annotation loses no commit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import napari_sam_stack as nss
from napari_sam_stack.errors import ProjectError
from napari_sam_stack.testing import synthetic_nuclei

SHAPE = (5, 40, 48)


@pytest.fixture(scope="module")
def image():
    return synthetic_nuclei(SHAPE, n_nuclei=3, seed=2)[0]


def rect(r0, r1, c0, c1):
    """A bool mask of the slice, True in rows r0..r1-1, cols c0..c1-1."""
    return np.pad(np.ones((r1 - r0, c1 - c0), bool), ((r0, SHAPE[1] - r1), (c0, SHAPE[2] - c1)))


def test_autosave_after_commit_and_on_the_timer(image, sam2_model, tmp_path):
    a = nss.Annotation(image, sam2_model, axis=0, in_memory=True, autosave=True, autosave_every=3600)
    assert nss.Annotation.find_autosave(image, axis=0) is None
    i = a.new_object()
    a.add_prompt(i, 1, mask=rect(2, 10, 2, 10))
    assert a.maybe_autosave() is None  # the timer has not run out
    a.commit()
    first = nss.Annotation.find_autosave(image, axis=0)
    assert first is not None and first.parent == a.autosave_path
    assert str(first).startswith(os.environ["NAPARI_SAM_STACK_CACHE"])
    assert a.maybe_autosave(force=True) is None  # nothing changed since
    chunk = first / "labels.zarr" / "c.1.0.0"
    inode = chunk.stat().st_ino
    j = a.new_object()
    a.add_prompt(j, 3, mask=rect(20, 30, 20, 30))  # not committed: saved by the timer
    a.autosave_every = 0
    second = a.maybe_autosave()
    assert second is not None and second != first and not first.exists()
    assert (second / "labels.zarr" / "c.1.0.0").stat().st_ino == inode  # unchanged slice: linked
    b = nss.Annotation.open(nss.Annotation.find_autosave(image, axis=0), image=image, model=sam2_model)
    assert np.array_equal(b.labels, a.labels)
    assert {o: x.status for o, x in b.objects.items()} == {i: "committed", j: "draft"}
    assert np.array_equal(b.mask(j, 3), rect(20, 30, 20, 30))
    a.discard_autosave()
    assert nss.Annotation.find_autosave(image, axis=0) is None
    # a session with in_memory=True touches no disk unless asked
    assert not nss.Annotation(image, sam2_model, axis=0, in_memory=True).autosave


def test_failed_autosave_warns_and_the_work_goes_on(image, sam2_model):
    from napari_sam_stack._persist import autosave_root

    root = autosave_root()
    root.parent.mkdir(parents=True, exist_ok=True)
    root.write_text("not a folder")  # the autosave folder cannot be made
    a = nss.Annotation(image, sam2_model, axis=0, in_memory=True, autosave=True)
    i = a.new_object()
    a.add_prompt(i, 0, mask=rect(0, 5, 0, 5))
    with pytest.warns(RuntimeWarning, match="autosave failed"):
        a.commit()
    assert (a.labels[0] == i).sum() == 25 and root.read_text() == "not a folder"


CHILD = textwrap.dedent("""
    import sys
    from pathlib import Path
    import numpy as np
    import napari_sam_stack as nss
    from napari_sam_stack import _project_io

    ckpt, config, image, out = sys.argv[1:5]
    out = Path(out)
    m = nss.load_model(checkpoint=ckpt, config=config, device="cpu")
    img = np.load(image)
    a = nss.Annotation(img, m, axis=0, in_memory=True, autosave=True)
    n = img.shape[0]
    for k in range(1000):
        i = a.new_object()
        z = k % n
        if k % 2:
            a.add_prompt(i, z, points=[[8 + 5 * (k % 5), 6 + 7 * (k % 6)]])
            a.propagate([i], start=max(0, z - 1), stop=z)
        else:
            mask = np.zeros(img.shape[1:], bool)
            mask[2 * k % 30: 2 * k % 30 + 6, 3 * k % 40: 3 * k % 40 + 6] = True
            a.add_prompt(i, z, mask=mask)
        a.commit([i])  # autosaved in here
        np.save(out / f"labels_{k}.npy", a.labels)
        print(f"committed {k} {i}", flush=True)
        if k == 4:  # from now on an autosave hangs half-written: the kill lands in the middle of one
            real = _project_io.write_arrays

            def slow(path, arrays):
                print("autosave in progress", flush=True)
                import time
                time.sleep(60)
                return real(path, arrays)

            _project_io.write_arrays = slow
            import napari_sam_stack.project as project
            project.write_arrays = slow
""")


def test_sigkill_in_the_middle_loses_no_commit(image, sam2_files, sam2_model, tmp_path):
    ckpt, config = sam2_files
    np.save(tmp_path / "image.npy", image)
    (tmp_path / "child.py").write_text(CHILD)
    proc = subprocess.Popen([sys.executable, str(tmp_path / "child.py"), str(ckpt), str(config),
                             str(tmp_path / "image.npy"), str(tmp_path)], stdout=subprocess.PIPE, text=True,
                            env=os.environ.copy())
    lines = []
    deadline = time.monotonic() + 600
    try:
        for line in proc.stdout:  # ends when the child exits
            lines.append(line.strip())
            if line.startswith("autosave in progress"):
                break
            assert time.monotonic() < deadline, lines
        time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL, lines
    finally:
        if proc.poll() is None:
            proc.kill()
    committed = [int(x.split()[1]) for x in lines if x.startswith("committed")]
    # commit 5 wrote its labels in memory, and its autosave was killed half-written: restoring gives
    # every commit that returned (0..4)
    assert committed == [0, 1, 2, 3, 4], lines
    path = nss.Annotation.find_autosave(image, axis=0)
    assert path is not None
    assert any(p.name.startswith(".tmp-") for p in path.parent.iterdir())  # the killed autosave's debris
    b = nss.Annotation.open(path, image=image, model=sam2_model)
    want = np.load(tmp_path / "labels_4.npy")
    assert np.array_equal(b.labels, want)
    assert sorted(np.unique(want))[1:] == [1, 2, 3, 4, 5] and list(b.objects) == [1, 2, 3, 4, 5]
    assert all(o.status == "committed" for o in b.objects.values())
    # the restored annotation goes on: new ids above every committed one, autosaves again
    b.autosave = True
    i = b.new_object()
    assert i == 6
    b.add_prompt(i, 0, mask=rect(30, 36, 40, 46))
    b.commit(overwrite=True)
    assert (b.labels == i).sum() == 36
    assert np.array_equal(nss.Annotation.open(nss.Annotation.find_autosave(image, axis=0), image=image,
                                              model=sam2_model).labels, b.labels)


def test_find_autosave_ignores_damaged_snapshots(image, sam2_model):
    a = nss.Annotation(image, sam2_model, axis=0, in_memory=True, autosave=True)
    i = a.new_object()
    a.add_prompt(i, 0, mask=rect(0, 5, 0, 5))
    a.commit()
    path = nss.Annotation.find_autosave(image, axis=0)
    (path / "napari-sam-stack-project.json").write_text("{")
    assert nss.Annotation.find_autosave(image, axis=0) is None
    with pytest.raises(ProjectError):
        nss.Annotation.open(path, image=image, model=sam2_model)


def test_each_annotation_keeps_its_own_autosave_and_save_removes_it(image, sam2_model, tmp_path):
    a = nss.Annotation(image, sam2_model, axis=0, in_memory=True, autosave=True)
    b = nss.Annotation(image, sam2_model, axis=0, in_memory=True, autosave=True)
    for x, z in ((a, 0), (b, 1)):
        i = x.new_object()
        x.add_prompt(i, z, mask=rect(0, 5, 0, 5))
        x.commit()
    snaps = sorted(p.name for p in a.autosave_path.iterdir())
    assert snaps == ["snap-000001", "snap-000002"]  # another annotation of the image: its autosave stays
    a.save(tmp_path / "a.sam")
    assert sorted(p.name for p in a.autosave_path.iterdir()) == ["snap-000002"]
    restored = nss.Annotation.open(nss.Annotation.find_autosave(image, axis=0), image=image, model=sam2_model)
    assert np.array_equal(restored.labels, b.labels)
