"""Embeddings on a Dask LocalCluster (worker processes) write the cache a single process writes."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest
import torch
import zarr

from napari_sam_stack import Session, load_model
from napari_sam_stack.errors import CacheError, SamStackError
from napari_sam_stack.testing import synthetic_nuclei

distributed = pytest.importorskip("distributed")
pytestmark = pytest.mark.filterwarnings("ignore:Object at .* is not recognized:UserWarning")  # (listing our cache with zarr)


@pytest.fixture(scope="module")
def client():
    from napari_sam_stack.distributed import local_cluster

    cluster = local_cluster(2)
    c = distributed.Client(cluster)
    yield c
    c.close()
    cluster.close()


@pytest.fixture(scope="module")
def image():
    return synthetic_nuclei((10, 61, 57), n_nuclei=4, seed=5)[0]


@pytest.fixture(scope="module")
def reference(image, sam2_model, tmp_path_factory):
    """The single-process cache of the same stack."""
    s = Session(image, sam2_model, cache_dir=tmp_path_factory.mktemp("ref"))
    assert s.compute_embeddings()
    return s.embeddings.path


def _assert_same_cache(a, b):
    assert a.name == b.name  # same signature -> same key
    ga, gb = zarr.open_group(a, mode="r"), zarr.open_group(b, mode="r")
    assert sorted(ga.array_keys()) == sorted(gb.array_keys())
    for k in ga.array_keys():
        np.testing.assert_array_equal(ga[k][...], gb[k][...], err_msg=k)  # bit for bit (NaN would be unfilled)
        assert not np.isnan(ga[k][...]).any()
    done_a, done_b = sorted(os.listdir(a / "done")), sorted(os.listdir(b / "done"))
    assert done_a == done_b == sorted(str(i) for i in range(len(done_a)))
    assert all((a / "done" / d).read_text() == (b / "done" / d).read_text() for d in done_a)  # pixel digests


def test_two_workers_write_the_single_process_cache(client, image, sam2_model, reference, tmp_path):
    s = Session(image, sam2_model, cache_dir=tmp_path / "c")
    seen = []
    assert s.compute_embeddings(client=client, threads=torch.get_num_threads(), progress=lambda d, t: seen.append((d, t)))
    assert seen[0] == (0, 10) and seen[-1] == (10, 10)
    _assert_same_cache(s.embeddings.path, reference)
    assert not any(client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_")).values())  # (torch 2.3x slower with it)
    workers = client.run(lambda: sorted(__import__("napari_sam_stack.distributed").distributed._MODELS))
    assert sum(len(v) for v in workers.values()) >= 1  # the model loaded once per worker that ran a task
    assert all(len(v) <= 1 for v in workers.values())
    # the napari user's session reads the same cache: nothing is encoded again
    s2 = Session(image, sam2_model, cache_dir=tmp_path / "c")
    s2.predict(4, points=[[30, 28]])
    assert s2.embeddings.encoded_slices == 0


def test_a_worker_killed_mid_run_is_retried_and_the_cache_is_intact(client, image, sam2_model, reference, tmp_path):
    s = Session(image, sam2_model, cache_dir=tmp_path / "c")
    result, errors = [], []

    def run():
        try:
            result.append(s.compute_embeddings(client=client, threads=torch.get_num_threads(), window=2, slices_per_task=1))
        except Exception as e:  # reported below
            errors.append(e)

    t = threading.Thread(target=run)
    t.start()
    done_dir = s.embeddings.path / "done"
    deadline = time.monotonic() + 240
    while not (done_dir.is_dir() and len(os.listdir(done_dir)) >= 2) and t.is_alive():
        assert time.monotonic() < deadline, "no slice was written"
        time.sleep(0.05)
    pids = client.run(os.getpid)
    victim = sorted(pids.values())[0]
    os.kill(victim, signal.SIGKILL)  # while tasks are running on it
    t.join(300)
    assert not t.is_alive() and not errors, errors
    assert result == [True]
    _assert_same_cache(s.embeddings.path, reference)
    client.wait_for_workers(2, timeout=120)  # the nanny restarted it


def test_resume_sends_only_the_missing_slices(client, image, sam2_model, reference, tmp_path):
    import shutil

    root = tmp_path / "c"
    shutil.copytree(reference, root / reference.name)
    entry = root / reference.name
    g = zarr.open_group(entry, mode="r+")
    g["fpn_0"][3] = np.zeros(g["fpn_0"].shape[1:], np.float32)  # slice 3 half written: chunk, no marker
    (entry / "done" / "3").unlink()
    (entry / "done" / "7").unlink()
    s = Session(image, sam2_model, cache_dir=root)
    seen = []
    assert s.compute_embeddings(client=client, threads=torch.get_num_threads(), progress=lambda d, t: seen.append((d, t)))
    assert seen[0] == (0, 2) and seen[-1] == (2, 2)
    _assert_same_cache(entry, reference)


def test_what_cannot_be_distributed_is_refused(client, image, sam2_model, tmp_path):
    with pytest.raises(CacheError, match="on-disk"):
        Session(image, sam2_model, in_memory=True).compute_embeddings(client=client)
    built = load_model(sam2_model.module, device="cpu")  # a module built in memory: workers cannot rebuild it
    with pytest.raises(SamStackError, match="checkpoint"):
        Session(image, built, cache_dir=tmp_path / "c").compute_embeddings(client=client)


def test_cli_embed_and_auto_on_a_local_cluster(image, sam2_files, reference, tmp_path, capsys):
    import tifffile

    from napari_sam_stack import cli

    ckpt, config = sam2_files
    model = ["--checkpoint", str(ckpt), "--config", str(config), "--device", "cpu", "--cache-dir", str(tmp_path / "c")]
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, image)
    threads = str(torch.get_num_threads())
    assert cli.main(["embed", str(stack), "--workers", "2", "--threads", threads, *model]) == 0
    assert "10 slices embedded" in capsys.readouterr().out
    _assert_same_cache(tmp_path / "c" / reference.name, reference)
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    out.mkdir()
    for k in range(2):
        tifffile.imwrite(folder / f"s{k}.tif", image[:4] + k, photometric="minisblack")
    (folder / "bad.tif").write_text("not a tiff")
    assert cli.main(["auto", str(folder), "--out", str(out), "--workers", "2", "--points-per-side", "2", "--every", "2",
                     *model]) == 1  # one stack per task; the bad one is reported, the others written
    text = capsys.readouterr().out
    assert "2 stacks segmented, 1 failed" in text and "error: bad.tif" in text
    for k in range(2):
        labels = tifffile.imread(out / f"s{k}_labels.tif")
        assert labels.shape == (4, 61, 57) and labels.dtype == np.uint32
