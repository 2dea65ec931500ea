"""Propagation equals the official SAM2VideoPredictor, with bounded memory and no encoder calls.

The reference is the same loaded module used as ``SAM2VideoPredictor``: ``init_state`` is
fed the same uint8 frames in memory (``load_video_frames`` replaced inside these tests
only), prompts go in as official users give them, then ``propagate_in_video`` forward
from the first prompted slice and in reverse from it. With several objects, each object is
compared with the official run of that object ALONE (our objects never influence each
other; the official multi-object run starts every object at the earliest prompt of any).
Slices are non-square and stacks longer than num_maskmem + max_obj_ptrs_in_encoder, so the
bounded memory is exercised. Batching itself: tests/test_propagate_batch.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import napari_sam_stack as nss
from napari_sam_stack.embeddings import preprocess
from napari_sam_stack.errors import Cancelled, ModelFamilyError, PromptError
from napari_sam_stack.prompts import make_prompt
from napari_sam_stack.propagate import Propagation, iter_propagate, memory_reach

N, H, W = 24, 45, 71  # > num_maskmem (3) + max_obj_ptrs_in_encoder (16)
# Same features, same ops: the numbers agree to float rounding. Tight, because dropping the
# oldest object pointer changes random-weight logits by only ~1e-4.
ATOL = 1e-5


@pytest.fixture(scope="module")
def stack():
    rng = np.random.default_rng(7)
    img = rng.integers(0, 256, (N, H, W), dtype=np.uint8)
    img[:, 10:30, 20:50] //= 3  # some structure
    return img


@pytest.fixture(scope="module")
def session(stack, sam2_model):
    s = nss.Session(stack, sam2_model, in_memory=True)
    s.compute_embeddings()
    return s


@pytest.fixture
def fresh(session):
    session.clear_prompts()
    yield session
    session.clear_prompts()


def _ours(session, **kw) -> dict[int, dict[int, np.ndarray]]:
    """{slice: {obj: logits}} from iter_propagate; every (slice, object) pair must come exactly once."""
    out = {}
    for index, logits in session.iter_propagate(**kw):
        assert logits, f"slice {index} yielded without objects"
        for o, v in logits.items():
            assert o not in out.get(index, {}), f"slice {index}, object {o} yielded twice"
            assert v.dtype == np.float32 and v.shape == session.frames.frame_shape
        out.setdefault(index, {}).update(logits)
    return out


def _official(module, session, monkeypatch, start=None, stop=None, max_forward=None, max_reverse=None, obj_ids=None):
    """The official predictor on the same in-memory frames, each object ALONE, forward then reverse.

    Per object: a fresh ``init_state`` holding only that object's prompts, ``propagate_in_video``
    from its first prompted slice (clipped into the range) forward, then in reverse from it.
    Returns {slice: {obj: logits}} merged over the objects.
    """
    result = {}
    for obj in session.prompts if obj_ids is None else obj_ids:
        for f, logits in _official_alone(module, session, monkeypatch, obj, start, stop, max_forward,
                                         max_reverse).items():
            result.setdefault(f, {}).update(logits)
    return result


def _official_alone(module, session, monkeypatch, obj, start, stop, max_forward, max_reverse):
    import sam2.sam2_video_predictor as svp

    frames = [session.frames[i] for i in range(len(session))]
    images, _ = preprocess(session.model, frames, "video")
    rows, cols = session.frames.frame_shape
    ma = module.memory_attention
    inner = ma.forward

    def float32_memory(curr, memory, curr_pos=None, memory_pos=None, num_obj_ptr_tokens=0):
        # sam2 1.1.0 on CPU: bfloat16 memories meet float32 weights when an object has no
        # pointer yet (prompted on a later slice); torch promotes them everywhere else.
        return inner(curr=curr, memory=memory.float(), curr_pos=curr_pos, memory_pos=memory_pos,
                     num_obj_ptr_tokens=num_obj_ptr_tokens)

    result = {}
    with monkeypatch.context() as m:
        m.setattr(svp, "load_video_frames", lambda **kw: (images, rows, cols))
        ma.forward = float32_memory
        try:
            state = module.init_state("in-memory frames")
            by_slice = session.prompts[obj]
            for i, p in sorted(by_slice.items()):
                if p.mask is not None:
                    module.add_new_mask(state, i, obj, p.mask)
                else:
                    module.add_new_points_or_box(state, i, obj, points=p.points, labels=p.labels, box=p.box)
            lo = 0 if start is None else start
            hi = len(session) - 1 if stop is None else stop
            anchor = min(max(min(by_slice), lo), hi)
            runs = [(False, hi - anchor if max_forward is None else max_forward)]
            if anchor > lo:
                runs.append((True, anchor - lo if max_reverse is None else max_reverse))
            for reverse, count in runs:
                for f, ids, masks in module.propagate_in_video(state, anchor, count, reverse=reverse):
                    assert list(ids) == [obj]
                    result[f] = {obj: masks[0, 0].float().numpy()}
        finally:
            del ma.forward
    return result


def _assert_same(ours, ref):
    assert sorted(ours) == sorted(ref)
    for f in ref:
        assert sorted(ours[f]) == sorted(ref[f])
        for o in ref[f]:
            np.testing.assert_allclose(ours[f][o], ref[f][o], atol=ATOL, rtol=0, err_msg=f"slice {f}, object {o}")


def _check(session, monkeypatch, **kw):
    ours = _ours(session, **kw)
    ref = _official(session.model.module, session, monkeypatch, **kw)
    _assert_same(ours, ref)
    # real logits flowed (the object-score bias is positive): not the -1024 'absent' fill
    assert all(v.max() > -100 for logits in ours.values() for v in logits.values())
    return ours


# ---------------------------------------------------------------- equality with the official predictor


def test_first_slice_forward(fresh, monkeypatch):
    fresh.add_prompt(1, 0, points=[[20, 30], [5, 60]], point_labels=[1, 0])
    assert sorted(_check(fresh, monkeypatch)) == list(range(N))


def test_last_slice_reverse(fresh, monkeypatch):
    fresh.add_prompt(3, N - 1, points=[[30, 12]])
    _check(fresh, monkeypatch)


def test_middle_both_directions(fresh, monkeypatch):
    fresh.add_prompt(1, 13, points=[[22, 35]])
    _check(fresh, monkeypatch)


def test_box_prompt_with_points(fresh, monkeypatch):
    fresh.add_prompt(1, 9, box=[8, 15, 33, 55])
    fresh.add_prompt(2, 9, box=[2, 2, 20, 30], points=[[10, 12]], point_labels=[0])
    _check(fresh, monkeypatch)


def test_mask_prompt(fresh, monkeypatch):
    mask = np.zeros((H, W), bool)
    mask[12:30, 20:52] = True
    fresh.add_prompt(4, 6, mask=mask)
    _check(fresh, monkeypatch)


def test_two_objects_same_and_different_slices(fresh, monkeypatch):
    fresh.add_prompt(1, 5, points=[[20, 30]])
    fresh.add_prompt(2, 5, points=[[40, 60]])
    fresh.add_prompt(7, 16, box=[5, 10, 30, 50])  # prompted later: memories without pointers
    _check(fresh, monkeypatch)


def test_two_slices_one_object(fresh, monkeypatch):
    fresh.add_prompt(1, 4, points=[[20, 30]])
    fresh.add_prompt(1, 20, points=[[25, 40], [3, 3]], point_labels=[1, 0])
    _check(fresh, monkeypatch)


def test_correction_equals_a_fresh_official_run(fresh, monkeypatch):
    fresh.add_prompt(1, 8, points=[[20, 30]])
    first = _check(fresh, monkeypatch)
    fresh.add_prompt(1, 16, points=[[30, 44]])  # a correction further on
    second = _check(fresh, monkeypatch)
    assert not np.allclose(first[20][1], second[20][1], atol=ATOL)
    fresh.remove_prompt(1, 16)
    _assert_same(_ours(fresh), first)


def test_memory_stride_and_short_pointer_window(fresh, monkeypatch):
    """Other memory settings move the kept window: stride 2, 6 object pointers."""
    module = fresh.model.module
    monkeypatch.setattr(module, "memory_temporal_stride_for_eval", 2)
    monkeypatch.setattr(module, "max_obj_ptrs_in_encoder", 6)
    fresh.add_prompt(1, 11, points=[[20, 30]])
    fresh.add_prompt(2, 15, points=[[30, 50]])
    prop = Propagation(fresh.model, fresh.embeddings, fresh.prompts)
    assert memory_reach(prop.predictor, N) == (3, 5)
    _check(fresh, monkeypatch)


def test_range(fresh, monkeypatch):
    fresh.add_prompt(1, 3, points=[[20, 30]])  # before the range: still conditions it
    fresh.add_prompt(2, 12, points=[[30, 50]])
    ours = _check(fresh, monkeypatch, start=7, stop=21)
    assert sorted(ours) == list(range(7, 22))


def test_plain_sam2base(sam2_model, stack, monkeypatch):
    """load_model(SAM2Base) gets the video predictor's official defaults."""
    from sam2.build_sam import build_sam2
    from sam2.modeling.sam2_base import SAM2Base
    from sam2.sam2_video_predictor import SAM2VideoPredictor

    from napari_sam_stack.testing import SAM2_BASE_CONFIG, SAM2_TINY_OVERRIDES

    sd = sam2_model.module.state_dict()
    base = build_sam2(SAM2_BASE_CONFIG, None, device="cpu", hydra_overrides_extra=SAM2_TINY_OVERRIDES)
    base.load_state_dict(sd)
    assert type(base) is SAM2Base
    ref_module = build_sam2(SAM2_BASE_CONFIG, None, device="cpu", hydra_overrides_extra=[
        *SAM2_TINY_OVERRIDES, "++model._target_=sam2.sam2_video_predictor.SAM2VideoPredictor"])
    ref_module.load_state_dict(sd)
    assert isinstance(ref_module, SAM2VideoPredictor)
    model = nss.load_model(base, device="cpu")
    s = nss.Session(stack, model, in_memory=True)
    s.add_prompt(1, 10, points=[[20, 30]])
    ours = _ours(s)
    memory_attention = base.memory_attention
    _assert_same(ours, _official(ref_module, s, monkeypatch))
    assert base.memory_attention is memory_attention  # the wrapper left the module alone


def test_four_d_time_series(sam2_model, monkeypatch):
    """A (T, Z, Y, X) movie propagated over time at one z (Frames' ``fixed``)."""
    rng = np.random.default_rng(3)
    movie = rng.integers(0, 256, (21, 3, 33, 52), dtype=np.uint8)
    s = nss.Session(movie, sam2_model, axis=0, fixed={1: 2}, in_memory=True)
    assert s.shape == (21, 33, 52)
    np.testing.assert_array_equal(s.frames[4][..., 0], movie[4, 2])
    s.add_prompt(1, 6, points=[[15, 20]])
    assert sorted(_check(s, monkeypatch)) == list(range(21))


# ---------------------------------------------------------------- cost: no encoder, bounded memory


def test_no_encoder_call_during_propagation(fresh):
    calls = []
    hook = fresh.model.module.image_encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        before = fresh.embeddings.encoder_calls
        fresh.add_prompt(1, 13, points=[[20, 30]])
        fresh.add_prompt(2, 20, points=[[30, 50]])
        _ours(fresh)
    finally:
        hook.remove()
    assert calls == [] and fresh.embeddings.encoder_calls == before


def test_memory_is_bounded(sam2_model, monkeypatch):
    n = 48
    rng = np.random.default_rng(5)
    s = nss.Session(rng.integers(0, 256, (n, 29, 40), dtype=np.uint8), sam2_model, in_memory=True)
    s.add_prompt(1, 20, points=[[10, 20]])
    s.add_prompt(2, 30, points=[[20, 30]])
    prop = Propagation(s.model, s.embeddings, s.prompts)
    mem, ptr = memory_reach(prop.predictor, n)
    assert (mem, ptr) == (2, 15)  # num_maskmem=3, max_obj_ptrs_in_encoder=16
    held, ours = [], {}
    for index, logits in prop.run():
        ours.setdefault(index, {}).update(logits)
        held.append(prop.stored_frames())
        for out_dict in prop.state["output_dict_per_obj"].values():
            assert all(o["pred_masks"] is None for o in out_dict["non_cond_frame_outputs"].values())
    per_obj_full = max(f for f, _ in held) / 2
    per_obj_total = max(f + p for f, p in held) / 2
    # the window behind the current slice, plus the slices after the start kept for the reverse pass
    assert per_obj_full <= 2 * mem + 1
    assert per_obj_total <= 2 * ptr + 1 < n
    # the forward pass from slice 20 is past the pinned window at its end: only O(window) held
    _assert_same(ours, _official(s.model.module, s, monkeypatch))


def test_max_absent_stops_each_direction(tmp_path, monkeypatch):
    from napari_sam_stack.testing import tiny_sam2_checkpoint

    ckpt, config = tiny_sam2_checkpoint(tmp_path, object_score_bias=-10.0)  # every object 'absent'
    model = nss.load_model(checkpoint=ckpt, config=config, device="cpu")
    rng = np.random.default_rng(2)
    s = nss.Session(rng.integers(0, 256, (20, 30, 41), dtype=np.uint8), model, in_memory=True)
    s.add_prompt(1, 10, points=[[10, 20]])
    calls = []
    ours = _ours(s, max_absent=2, progress=lambda d, t: calls.append((d, t)))
    assert sorted(ours) == [8, 9, 10, 11]
    assert calls[-1] == (4, 4) and calls[0] == (1, 20)
    _assert_same(ours, _official(model.module, s, monkeypatch, max_forward=1, max_reverse=2))
    # a prompted slice ahead keeps the direction going until it is passed
    s.add_prompt(1, 14, points=[[12, 22]])
    ours = _ours(s, max_absent=2)
    assert sorted(ours) == [8, 9, 10, 11, 12, 13, 14]
    assert all(v.max() <= -1000 for logits in ours.values() for v in logits.values())
    with pytest.raises(ValueError, match="max_absent"):
        _ours(s, max_absent=0)


# ---------------------------------------------------------------- progress, cancel, bad input


def test_progress_and_cancel(fresh):
    fresh.add_prompt(1, 10, points=[[20, 30]])
    calls = []
    _ours(fresh, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(i, N) for i in range(1, N + 1)]

    assert_cancels(fresh, after=3)


def assert_cancels(session, after: int) -> None:
    """cancel() turning True after ``after`` yields raises Cancelled there; propagate() too."""
    seen = []
    with pytest.raises(Cancelled):
        for index, _ in session.iter_propagate(cancel=lambda: len(seen) >= after):
            seen.append(index)
    assert len(seen) == after
    with pytest.raises(Cancelled):
        session.propagate(cancel=lambda: True)


def test_bad_input(fresh, sam1_model, stack):
    with pytest.raises(PromptError, match="nothing to propagate"):
        fresh.propagate()
    fresh.add_prompt(1, 5, points=[[20, 30]])
    with pytest.raises(PromptError, match="out of range"):
        fresh.propagate(start=N)
    with pytest.raises(PromptError, match="out of range"):
        fresh.propagate(stop=-1)
    with pytest.raises(PromptError, match="empty range"):
        fresh.propagate(start=9, stop=3)
    for bad in (0, -2, 1.5):
        with pytest.raises(PromptError, match="object id"):
            fresh.add_prompt(bad, 5, points=[[20, 30]])
    with pytest.raises(PromptError, match="out of range"):
        fresh.add_prompt(2, N, points=[[20, 30]])
    s1 = nss.Session(stack, sam1_model, in_memory=True)
    s1.add_prompt(1, 0, points=[[20, 30]])
    with pytest.raises(ModelFamilyError, match="SAM 2"):
        s1.propagate()
    mask = np.zeros((H, W), bool)
    mask[5:9, 5:9] = True
    with pytest.raises(PromptError, match="either a mask or points"):
        fresh.add_prompt(2, 7, points=[[20, 30]], mask=mask)
    both = make_prompt((H, W), points=[[20, 30]], mask=mask)  # direct callers are checked too
    with pytest.raises(PromptError, match="either a mask or points"):
        list(iter_propagate(fresh.model, fresh.embeddings, {2: {7: both}}))
    with pytest.raises(PromptError, match="no prompts"):
        list(iter_propagate(fresh.model, fresh.embeddings, {}))


def test_dtype_wrapper_casts_only_the_memory(sam2_model):
    """The bfloat16 fix: float32 memory-attention output from bfloat16 memories."""
    from napari_sam_stack._video import StackVideoPredictor

    pred = StackVideoPredictor.around(sam2_model.module)
    assert pred.image_encoder is sam2_model.module.image_encoder
    assert pred.memory_attention is not sam2_model.module.memory_attention
    c = pred.hidden_dim
    side = pred.image_size // 16  # the memory-attention grid (RoPE needs its real size)
    curr = [torch.randn(side * side, 1, c)]
    pos = [torch.randn(side * side, 1, c)]
    memory = torch.randn(2 * side * side, 1, pred.mem_dim)
    memory_pos = torch.randn(2 * side * side, 1, pred.mem_dim)
    with torch.inference_mode():
        got = pred.memory_attention(curr=curr, curr_pos=pos, memory=memory.bfloat16(), memory_pos=memory_pos)
        want = sam2_model.module.memory_attention(
            curr=curr, curr_pos=pos, memory=memory.bfloat16().float(), memory_pos=memory_pos)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want)
