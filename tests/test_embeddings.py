"""EmbeddingStore: equality with the official encoders' inputs/outputs, the zarr cache,
resume after kill -9, signature mismatch, damaged chunks, cancel, progress, threads."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import warnings
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import torch
import zarr

from napari_sam_stack import embeddings as emb_mod
from napari_sam_stack.embeddings import CorruptCacheWarning, EmbeddingStore, StaleCacheWarning, cache_info, clear_cache
from napari_sam_stack.errors import ImageError
from napari_sam_stack.normalise import Frames

ATOL = 1e-5


def _close(a, b, atol=ATOL):
    assert a.shape == b.shape, (a.shape, b.shape)
    torch.testing.assert_close(a.float().cpu(), b.float().cpu(), atol=atol, rtol=1e-4)


def official_sam2_video(model, frame, tmp_path):
    """What SAM2VideoPredictor feeds forward_image: the frame loaded as sam2.utils.misc does, then mean/std."""
    from PIL import Image
    from sam2.utils.misc import _load_img_as_tensor

    path = tmp_path / "frame.png"  # lossless, so the loader sees the frame's exact pixels
    Image.fromarray(frame).save(path)
    size = model.module.image_size
    images = torch.zeros(1, 3, size, size, dtype=torch.float32)
    images[0], h, w = _load_img_as_tensor(str(path), size)
    assert (h, w) == frame.shape[:2]
    images -= torch.tensor((0.485, 0.456, 0.406))[:, None, None]
    images /= torch.tensor((0.229, 0.224, 0.225))[:, None, None]
    with torch.inference_mode():
        return model.module.forward_image(images)


def official_sam2_image(model, frame):
    """What SAM2ImagePredictor.set_image feeds forward_image (its own SAM2Transforms)."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    pred = SAM2ImagePredictor(model.module)
    x = pred._transforms(frame)[None]
    with torch.inference_mode():
        return model.module.forward_image(x)


def assert_sam2_equal(emb, out):
    assert len(emb.backbone_fpn) == len(out["backbone_fpn"])
    for a, b in zip(emb.backbone_fpn, out["backbone_fpn"]):
        _close(a, b)
    for a, b in zip(emb.vision_pos_enc, out["vision_pos_enc"]):
        _close(a, b)
    _close(emb.backbone_out()["vision_features"], out["vision_features"])


def _files(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()]


# ---------------------------------------------------------------- equality with the official code


def test_sam1_features_equal_sam_predictor(sam1_model, stack_u8, tmp_path):
    from segment_anything import SamPredictor

    frames = Frames(stack_u8, 0)
    store = EmbeddingStore(frames, sam1_model, cache_dir=tmp_path)
    store.compute(batch_size=2)
    reopened = EmbeddingStore(Frames(stack_u8.copy(), 0), sam1_model, cache_dir=tmp_path)
    pred = SamPredictor(sam1_model.module)
    for i in (0, 3, 5):
        pred.set_image(frames[i])
        for s in (store, reopened):
            e = s.get(i)
            _close(e.features, pred.features)
            assert e.input_size == tuple(pred.input_size) and e.original_size == tuple(pred.original_size)
    assert reopened.encoder_calls == 0 and store.encoded_slices == 6 and store.encoder_calls == 3


def test_sam2_video_features_equal_official(sam2_model, stack_u8, tmp_path):
    frames = Frames(stack_u8, 0)  # 45 x 71: non-square
    store = EmbeddingStore(frames, sam2_model, sam2_resize="video", cache_dir=tmp_path / "c")
    store.compute(batch_size=4)
    reopened = EmbeddingStore(Frames(stack_u8, 0), sam2_model, cache_dir=tmp_path / "c")
    for i in range(len(frames)):
        ref = official_sam2_video(sam2_model, frames[i], tmp_path)
        assert_sam2_equal(store.get(i), ref)
        assert_sam2_equal(reopened.get(i), ref)
    assert reopened.encoder_calls == 0
    # the positional encodings are stored once and shared by every slice
    assert reopened.get(1).vision_pos_enc[0] is reopened.get(4).vision_pos_enc[0]


def test_sam2_image_mode_equals_image_predictor_transforms(sam2_model, tmp_path):
    img = np.random.default_rng(2).integers(0, 256, (37, 90, 3), dtype=np.uint8)
    store = EmbeddingStore(Frames(img, None), sam2_model, sam2_resize="image", cache_dir=tmp_path)
    assert len(store) == 1
    assert_sam2_equal(store.get(0), official_sam2_image(sam2_model, img))
    video = EmbeddingStore(Frames(img, None), sam2_model, sam2_resize="video", cache_dir=tmp_path)
    assert video.path != store.path  # preprocessing is part of the signature


def _layouts(tmp_path):
    rng = np.random.default_rng(4)
    u16 = rng.integers(0, 4000, (3, 30, 41)).astype(np.uint16)
    flt = rng.normal(0, 1, (3, 30, 41)).astype(np.float32)
    flt[0, :3, :3] = np.nan
    flt[1, 5, 5], flt[2, 6, 6] = np.inf, -np.inf
    z = zarr.create_array(tmp_path / "mc.zarr", shape=(3, 30, 41, 4), dtype="int16", chunks=(1, 30, 41, 4))
    z[:] = rng.integers(-500, 500, z.shape)
    return {
        "uint16": (u16, 0, {}),
        "float-nan-inf": (flt, 0, {}),
        "bool": (flt > 0.5, 0, {}),
        "constant": (np.full((2, 30, 41), 9, np.uint16), 0, {}),
        "int16-zarr-channels": (z, 0, {"channel": [3, 0]}),
        "4d-fixed": (rng.integers(0, 99, (2, 3, 30, 41)).astype(np.int32), 1, {"fixed": {0: 1}}),
        "dask-rgb": (da.from_array(rng.integers(0, 256, (3, 30, 41, 3), dtype=np.uint8), chunks=(1, 30, 41, 3)), 0, {}),
        "2d-float64": (rng.normal(5, 2, (30, 41)), None, {}),
    }


@pytest.mark.parametrize("layout", ["uint16", "float-nan-inf", "bool", "constant", "int16-zarr-channels",
                                    "4d-fixed", "dask-rgb", "2d-float64"])
def test_every_dtype_and_layout(sam2_model, layout, tmp_path):
    image, axis, kw = _layouts(tmp_path)[layout]
    frames = Frames(image, axis, **kw)
    store = EmbeddingStore(frames, sam2_model, cache_dir=tmp_path / "c")
    store.compute()
    reopened = EmbeddingStore(Frames(image, axis, **kw), sam2_model, cache_dir=tmp_path / "c")
    for i in range(len(frames)):
        ref = official_sam2_video(sam2_model, frames[i], tmp_path)
        assert_sam2_equal(reopened.get(i), ref)
    assert reopened.encoder_calls == 0


# ---------------------------------------------------------------- cache behaviour


def test_default_root_follows_env_and_in_memory_writes_nothing(sam2_model, stack_u8, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_SAM_STACK_CACHE", str(tmp_path / "moved"))
    store = EmbeddingStore(Frames(stack_u8, 0), sam2_model)
    store.get(2)
    assert store.path.parent == tmp_path / "moved" / "embeddings" and store.is_computed(2)
    assert cache_info().path == tmp_path / "moved" / "embeddings"
    mem = EmbeddingStore(Frames(stack_u8[:3], 0), sam2_model, in_memory=True)
    mem.compute()
    assert mem.path is None and mem.computed() == [0, 1, 2]
    assert len(cache_info().entries) == 1


def test_lru_is_bounded_and_reuses_objects(sam2_model, stack_u8, tmp_path):
    store = EmbeddingStore(Frames(stack_u8, 0), sam2_model, cache_dir=tmp_path, lru_slices=2)
    store.compute()
    a = store.get(0)
    assert store.get(0) is a  # repeated clicks: no disk read
    store.get(1), store.get(2)
    assert len(store._mem) == 2 and store.get(0) is not a  # evicted, read back from disk
    mem = EmbeddingStore(Frames(stack_u8, 0), sam2_model, in_memory=True, lru_slices=2)
    mem.compute()
    assert len(mem._mem) == 6


def test_signature_mismatch_recomputes(sam2_model, stack_u8, tmp_path, monkeypatch):
    first = EmbeddingStore(Frames(stack_u8, 0), sam2_model, cache_dir=tmp_path)
    first.compute()
    same = EmbeddingStore(Frames(stack_u8.copy(), 0), sam2_model, cache_dir=tmp_path)
    assert same.path == first.path and same.computed() == list(range(6))
    changed = stack_u8.copy()
    changed[0, 22, 30] ^= 0xFF  # one pixel of the sampled middle row
    variants = [
        EmbeddingStore(Frames(changed, 0), sam2_model, cache_dir=tmp_path),
        EmbeddingStore(Frames(stack_u8, 0), sam2_model, sam2_resize="image", cache_dir=tmp_path),
        EmbeddingStore(Frames(stack_u8, 0), sam2_model, dtype="float16", cache_dir=tmp_path),
        EmbeddingStore(Frames(stack_u8.astype(np.uint16), 0), sam2_model, cache_dir=tmp_path),
    ]
    import napari_sam_stack

    with monkeypatch.context() as m:
        m.setattr(napari_sam_stack, "__version__", "999")
        variants.append(EmbeddingStore(Frames(stack_u8, 0), sam2_model, cache_dir=tmp_path))
    assert len({first.path, *(v.path for v in variants)}) == 6
    for v in variants:
        assert v.computed() == []
        v.get(0)
        assert v.encoder_calls == 1
    # a folder whose recorded signature differs from its name is never reused
    meta = first.path / "zarr.json"
    meta.write_text(meta.read_text().replace('"dtype": "float32"', '"dtype": "tampered"', 1))
    with pytest.warns(CorruptCacheWarning, match="signature"):
        again = EmbeddingStore(Frames(stack_u8, 0), sam2_model, cache_dir=tmp_path)
    assert again.computed() == []


REVIEW_SHAPE = (20, 200, 200)


@pytest.mark.parametrize("edit", ["unsampled slice zeroed", "2x2 patch"])
def test_edit_the_sampled_signature_misses_recomputes_exactly_that_slice(sam2_model, tmp_path, edit):
    stack = np.random.default_rng(3).integers(1, 256, REVIEW_SHAPE, dtype=np.uint8)
    first = EmbeddingStore(Frames(stack, 0), sam2_model, cache_dir=tmp_path)
    first.compute(batch_size=4)
    edited = stack.copy()
    if edit == "2x2 patch":
        edited[0, 1:3, 1:3] ^= 0xFF  # off the 64x64 grid and the middle row
    else:
        edited[1] = 0  # slice 1 is not among the sampled slices
    changed = [0] if edit == "2x2 patch" else [1]
    assert Frames(edited, 0).signature() == Frames(stack, 0).signature()  # the same cache folder...
    reopened = EmbeddingStore(Frames(edited, 0), sam2_model, cache_dir=tmp_path)
    assert reopened.path == first.path and reopened.computed() == list(range(REVIEW_SHAPE[0]))
    clean = EmbeddingStore(Frames(edited, 0), sam2_model, in_memory=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = [reopened.get(i) for i in range(REVIEW_SHAPE[0])]
    stale = [w for w in caught if issubclass(w.category, StaleCacheWarning)]
    assert len(stale) == len(caught) == 1 and f"slice {changed[0]} " in str(stale[0].message)
    assert reopened.encoded_slices == 1  # ...but only the edited slice is encoded again
    for i, e in enumerate(got):
        for a, b in zip(e.backbone_fpn, clean.get(i).backbone_fpn):
            _close(a, b, atol=1e-6)
    # the cache now holds the edited slice: the original image gets its own slice back, not the edit's
    back = EmbeddingStore(Frames(stack, 0), sam2_model, cache_dir=tmp_path)
    with pytest.warns(StaleCacheWarning, match=f"slice {changed[0]} "):
        e = back.get(changed[0])
    original = EmbeddingStore(Frames(stack[changed[0]], None), sam2_model, sam2_resize="video", in_memory=True)
    for a, b in zip(e.backbone_fpn, original.get(0).backbone_fpn):
        _close(a, b, atol=1e-6)
    assert back.encoded_slices == 1


def test_pixel_digest_and_unreadable_marker(sam2_model, stack_u8, tmp_path):
    from napari_sam_stack._cache import pixel_digest

    a = np.arange(24, dtype=np.uint16).reshape(4, 6)
    assert pixel_digest(a) == pixel_digest(np.asfortranarray(a)) == pixel_digest(a.T.copy().T)
    flipped = a.copy()
    flipped[3, 5] ^= 1
    others = [flipped, a.astype(np.int16), a.reshape(6, 4), a.astype(bool), a.astype(np.float16)]
    assert len({pixel_digest(a), *map(pixel_digest, others)}) == 6
    store = EmbeddingStore(Frames(stack_u8, 0), sam2_model, cache_dir=tmp_path)
    store.compute()
    (store.path / "done" / "2").write_text("")  # e.g. written by hand: no digest
    again = EmbeddingStore(Frames(stack_u8, 0), sam2_model, cache_dir=tmp_path)
    with pytest.warns(StaleCacheWarning, match="slice 2 "):
        again.get(2)
    assert again.encoded_slices == 1 and (store.path / "done" / "2").read_text() == pixel_digest(stack_u8[2])
    assert not [p for p in (store.path / "done").iterdir() if not p.name.isdigit()]  # no marker debris


def _chunk(store, index, level="fpn_0"):
    files = [p for p in _files(store.path / level / "c") if p.parts[-4] == str(index)]  # c/<slice>/0/0/0
    assert len(files) == 1, files
    return files[0]


def test_damaged_chunk_is_recomputed_with_warning(sam2_model, stack_u8, tmp_path):
    frames = Frames(stack_u8, 0)
    store = EmbeddingStore(frames, sam2_model, cache_dir=tmp_path)
    store.compute()
    flipped = _chunk(store, 2, "fpn_1")
    raw = bytearray(flipped.read_bytes())
    raw[len(raw) // 2] ^= 0x55
    flipped.write_bytes(bytes(raw))
    _chunk(store, 4, "fpn_2").write_bytes(b"\x00" * 7)  # truncated
    _chunk(store, 5, "fpn_0").unlink()  # lost
    fresh = EmbeddingStore(Frames(stack_u8, 0), sam2_model, cache_dir=tmp_path)
    for i in (2, 4, 5):
        with pytest.warns(CorruptCacheWarning, match=f"slice {i}"):
            e = fresh.get(i)
        assert_sam2_equal(e, official_sam2_video(sam2_model, frames[i], tmp_path))
    assert fresh.encoded_slices == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = EmbeddingStore(Frames(stack_u8, 0), sam2_model, cache_dir=tmp_path)
        for i in range(6):
            again.get(i)
    assert again.encoder_calls == 0


def test_debris_is_replaced_or_removed(sam2_model, stack_u8, tmp_path):
    from napari_sam_stack._cache import MARKER

    store = EmbeddingStore(Frames(stack_u8, 0), sam2_model, cache_dir=tmp_path)
    (store.path / "fpn_0").mkdir(parents=True)  # our folder without metadata, e.g. an interrupted delete
    (store.path / MARKER).write_text("napari-sam-stack embeddings cache, format 3\n")
    old, recent, foreign = tmp_path / ".tmp-old-1", tmp_path / ".tmp-recent-2", tmp_path / ".tmp-user-3"
    for d in (old, recent, foreign):  # killed creations (ours carry the marker), and a user's folder
        d.mkdir()
        os.utime(d, (1, 1))
    (old / MARKER).write_text("napari-sam-stack embeddings cache, format 3\n")
    (recent / MARKER).write_text("napari-sam-stack embeddings cache, format 3\n")
    os.utime(old, (1, 1))
    store.get(1)
    assert store.path is not None and (store.path / "zarr.json").exists() and store.computed() == [1]
    assert not old.exists() and recent.exists()  # a recent one may belong to a running process
    assert foreign.exists()  # no marker: never ours to delete


def test_foreign_folder_at_the_key_is_left_alone(sam2_model, stack_u8, tmp_path):
    probe = EmbeddingStore(Frames(stack_u8, 0), sam2_model, in_memory=True)
    key = EmbeddingStore(Frames(stack_u8, 0), sam2_model, cache_dir=tmp_path).path
    (key / "notes").mkdir(parents=True)
    (key / "notes" / "a.txt").write_text("mine")
    with pytest.warns(RuntimeWarning, match="not a napari-sam-stack cache"):
        store = EmbeddingStore(Frames(stack_u8, 0), sam2_model, cache_dir=tmp_path)
    assert not store.on_disk and "not a napari-sam-stack cache" in store.fallback_reason
    assert_sam2_equal(store.get(2), official_sam2_video(sam2_model, Frames(stack_u8, 0)[2], tmp_path))
    assert (key / "notes" / "a.txt").read_text() == "mine" and sorted(p.name for p in key.iterdir()) == ["notes"]
    assert probe.on_disk is False


def test_half_written_slice_is_invisible_and_recomputed(sam2_model, stack_u8, tmp_path):
    store = EmbeddingStore(Frames(stack_u8, 0), sam2_model, cache_dir=tmp_path)
    store.compute()
    (store.path / "done" / "3").unlink()  # chunks written, killed before the marker
    reader = EmbeddingStore(Frames(stack_u8, 0), sam2_model, cache_dir=tmp_path)
    assert not reader.is_computed(3) and reader.computed() == [0, 1, 2, 4, 5]
    reader.compute()
    assert reader.encoded_slices == 1 and reader.is_computed(3)


def test_float16_storage_error(sam2_model, stack_u8, tmp_path):
    f32 = EmbeddingStore(Frames(stack_u8, 0), sam2_model, cache_dir=tmp_path)
    f16 = EmbeddingStore(Frames(stack_u8, 0), sam2_model, cache_dir=tmp_path, dtype="float16")
    f16.compute(), f32.compute()
    on_demand = EmbeddingStore(Frames(stack_u8, 0), sam2_model, in_memory=True)
    for i in (0, 5):
        for a, b in zip(f32.get(i).backbone_fpn, f16.get(i).backbone_fpn):
            assert b.dtype == torch.float32
            rel = ((a - b).norm() / a.norm()).item()
            assert 0 < rel < 1e-3  # float16 rounding: about 2.4e-4
        assert_sam2_equal(on_demand.get(i), official_sam2_video(sam2_model, Frames(stack_u8, 0)[i], tmp_path))
    assert sum(p.stat().st_size for p in _files(f16.path)) < sum(p.stat().st_size for p in _files(f32.path))
    with pytest.raises(ValueError, match="dtype"):
        EmbeddingStore(Frames(stack_u8, 0), sam2_model, dtype="int8")


# ---------------------------------------------------------------- compute: batches, progress, cancel


def test_progress_and_batches(sam2_model, stack_u8, tmp_path):
    calls = []
    store = EmbeddingStore(Frames(stack_u8, 0), sam2_model, cache_dir=tmp_path)
    assert store.compute(progress=lambda d, t: calls.append((d, t)), batch_size=4) is True
    assert calls == [(0, 6), (4, 6), (6, 6)] and store.encoder_calls == 2
    calls.clear()
    store.compute(indices=[1, 2], progress=lambda d, t: calls.append((d, t)))
    assert calls == [(0, 0)] and store.encoder_calls == 2
    for bad in (6, -7, 1.5):
        with pytest.raises(ImageError, match="slice"):
            store.get(bad)
    assert store.get(-1) is store.get(5)


def test_cancel_keeps_finished_slices(sam2_model, stack_u8, tmp_path):
    seen = []
    store = EmbeddingStore(Frames(stack_u8, 0), sam2_model, cache_dir=tmp_path)
    done = store.compute(progress=lambda d, t: seen.append(d), cancel=lambda: seen[-1] >= 2)
    k = len(store.computed())
    assert done is False and store.computed() == list(range(k)) and 2 <= k < 6 and seen[-1] == k
    resumed = EmbeddingStore(Frames(stack_u8, 0), sam2_model, cache_dir=tmp_path)
    assert resumed.compute() is True and resumed.encoded_slices == 6 - k


def test_get_during_background_compute(sam2_model, stack_u8, tmp_path, monkeypatch):
    """A click on a computed slice never waits for the running batch; one on an uncomputed
    slice encodes just that slice; no slice is encoded twice."""
    frames = Frames(stack_u8, 0)
    store = EmbeddingStore(frames, sam2_model, cache_dir=tmp_path)
    store.compute(indices=[0])
    release, entered = threading.Event(), threading.Event()
    batches = []
    real_prepare = store._prepare

    def slow_prepare(batch):
        batches.append(list(batch))
        if 2 in batch:  # the background batch (claimed, in flight) blocks until the main thread has clicked around
            entered.set()
            assert release.wait(60)
        return real_prepare(batch)

    monkeypatch.setattr(store, "_prepare", slow_prepare)
    worker = threading.Thread(target=store.compute, kwargs={"batch_size": 2})
    worker.start()
    assert entered.wait(60)
    assert store.get(0) is not None  # computed: no wait on the blocked batch
    e5 = store.get(5)  # uncomputed: encoded on demand while the batch is still running
    assert worker.is_alive() and not store.is_computed(2) and [5] in batches
    release.set()
    worker.join(60)
    assert sorted(i for b in batches for i in b) == [1, 2, 3, 4, 5]
    assert store.encoded_slices == 1 + 5 and store.computed() == list(range(6))
    assert_sam2_equal(e5, official_sam2_video(sam2_model, frames[5], tmp_path))
    assert_sam2_equal(store.get(2), official_sam2_video(sam2_model, frames[2], tmp_path))


def test_two_concurrent_computes_share_the_work(sam2_model, stack_u8, tmp_path):
    store = EmbeddingStore(Frames(stack_u8, 0), sam2_model, cache_dir=tmp_path)
    results = []
    workers = [threading.Thread(target=lambda: results.append(store.compute())) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert not any(w.is_alive() for w in workers), "deadlock"
    assert results == [True, True] and store.encoded_slices == 6 and store.computed() == list(range(6))


def test_failed_batch_releases_its_slices(sam2_model, stack_u8, tmp_path, monkeypatch):
    store = EmbeddingStore(Frames(stack_u8, 0), sam2_model, cache_dir=tmp_path)
    real_prepare = store._prepare

    def failing(batch):
        if 3 in batch:
            raise OSError("unreadable slice")
        return real_prepare(batch)

    with monkeypatch.context() as m:
        m.setattr(store, "_prepare", failing)
        with pytest.raises(OSError, match="unreadable"):
            store.compute(batch_size=2)
    assert store._inflight == {} and store.computed() == [0, 1]
    store.get(3)  # not stuck waiting on a dead claim


def test_unwritable_cache_falls_back_to_memory(sam2_model, stack_u8, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    with pytest.warns(RuntimeWarning, match="cannot write the embeddings cache.*is a file, not a folder"):
        store = EmbeddingStore(Frames(stack_u8, 0), sam2_model, cache_dir=blocker)  # known at once (CLI: on_disk)
    assert not store.on_disk and "is a file" in store.fallback_reason
    store.compute(batch_size=4)
    assert store.in_memory and store.path is None and store.computed() == list(range(6))
    assert_sam2_equal(store.get(5), official_sam2_video(sam2_model, Frames(stack_u8, 0)[5], tmp_path))
    assert store.encoded_slices == 6


# ---------------------------------------------------------------- kill -9 and resume

KILL_SHAPE = (16, 40, 52)

CHILD = textwrap.dedent("""
    import sys, time
    import numpy as np
    from napari_sam_stack import load_model
    from napari_sam_stack.embeddings import EmbeddingStore
    from napari_sam_stack.normalise import Frames

    ckpt, config, cache = sys.argv[1:4]
    model = load_model(checkpoint=ckpt, config=config, device="cpu")
    stack = np.random.default_rng(11).integers(0, 256, {shape}, dtype=np.uint8)

    def progress(done, total):
        print(done, total, flush=True)
        time.sleep(0.15)  # a slower encoder, so the kill lands mid-run

    EmbeddingStore(Frames(stack, 0), model, cache_dir=cache).compute(progress=progress)
    print("finished", flush=True)
""").format(shape=KILL_SHAPE)


def test_kill9_then_resume(sam2_files, sam2_model, tmp_path):
    ckpt, config = sam2_files
    cache = tmp_path / "cache"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(ckpt), str(config), str(cache)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stack = np.random.default_rng(11).integers(0, 256, KILL_SHAPE, dtype=np.uint8)
    try:
        for line in child.stdout:
            if line.split()[0] == "3":
                break
        # a reader in another process while the writer runs: only complete slices, read intact
        reader = EmbeddingStore(Frames(stack, 0), sam2_model, cache_dir=cache)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            seen = reader.computed()
            assert len(seen) >= 3 and all(reader.get(i) is not None for i in seen)
        assert reader.encoder_calls == 0
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(60)
        err = child.stderr.read()
    assert child.returncode == -signal.SIGKILL, err
    resumed = EmbeddingStore(Frames(stack, 0), sam2_model, cache_dir=cache)
    done = resumed.computed()
    assert 3 <= len(done) < KILL_SHAPE[0] and done == list(range(len(done)))
    resumed.compute()
    assert resumed.encoded_slices == KILL_SHAPE[0] - len(done)
    clean = EmbeddingStore(Frames(stack, 0), sam2_model, in_memory=True)
    check = EmbeddingStore(Frames(stack, 0), sam2_model, cache_dir=cache)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for i in range(KILL_SHAPE[0]):
            for a, b in zip(check.get(i).backbone_fpn, clean.get(i).backbone_fpn):
                _close(a, b, atol=1e-6)
    assert check.encoder_calls == 0 and not list(cache.glob(".tmp-*"))


# ---------------------------------------------------------------- management


def test_cache_info_and_clear(sam2_model, sam1_model, stack_u8, tmp_path):
    assert cache_info(tmp_path / "none").entries == []
    a = EmbeddingStore(Frames(stack_u8, 0), sam2_model, cache_dir=tmp_path)
    a.compute()
    b = EmbeddingStore(Frames(stack_u8[:2], 0), sam1_model, cache_dir=tmp_path)
    b.get(1)
    from napari_sam_stack._cache import MARKER

    (tmp_path / ".tmp-leftover-1234").mkdir()  # an interrupted creation (ours: marked)
    (tmp_path / ".tmp-leftover-1234" / MARKER).write_text("napari-sam-stack embeddings cache, format 3\n")
    info = cache_info(tmp_path)
    assert info.path == tmp_path and len(info.entries) == 2
    by_path = {e.path: e for e in info.entries}
    assert (by_path[a.path].computed, by_path[a.path].slices, by_path[a.path].frame_shape) == (6, 6, (45, 71))
    assert by_path[b.path].computed == 1 and by_path[b.path].slices == 2
    assert info.size == sum(p.stat().st_size for p in _files(tmp_path)) > 0
    assert "2 stack(s)" in str(info) and "6/6 slices of 45x71" in str(info)
    leftover = (tmp_path / ".tmp-leftover-1234" / MARKER).stat().st_size
    assert clear_cache(tmp_path, older_than_days=1) == leftover and not (tmp_path / ".tmp-leftover-1234").exists()
    assert len(cache_info(tmp_path).entries) == 2
    b.clear()
    assert not b.path.exists() and not b.is_computed(1)
    freed = clear_cache(tmp_path)
    assert freed > 0 and cache_info(tmp_path).entries == [] and cache_info(tmp_path).size == 0
    assert a.computed() == []
    a.get(0)  # a store whose folder was cleared starts again
    assert a.computed() == [0]
