"""SAM 2 propagation through a z-stack or time series, over cached embeddings.

Each run starts from a fresh state holding every stored prompt, so adding or removing a
prompt and propagating again gives what SAM 2 gives for those prompts.

Every object is tracked on its own, exactly as ``SAM2VideoPredictor`` tracks that object
when it is the only one: forward from the object's first prompted slice (clipped into the
range), then in reverse from it, all of its prompts conditioning; other objects never
change its numbers (see tests/test_propagate.py and tests/test_propagate_batch.py).
The objects run side by side: at every step each object computes its next slice, and the
step's (slice, object) pairs go through SAM 2 together (:mod:`._batch`), so one run of K
objects costs far less than K runs. docs/propagation.md states the rules.

Differences from the official predictor, none of which changes a number:
- frames are read lazily from the embeddings store, never re-encoded;
- memory stays bounded: only what later slices read is kept (conditioning slices, the
  last memories and object pointers in the direction of travel, and the ones just after
  the object's start slice that its reverse pass reads);
- each (slice, object) pair is yielded once; where the reverse pass recomputes an object's
  start slice (prompted only outside the range) its final, reverse value is the one yielded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import Cancelled, PromptError
from .prompts import Prompt

_PTR_ONLY_DROPPED = ("maskmem_features", "maskmem_pos_enc", "pred_masks")
TIME_AXES = {"t", "time", "frame", "frames"}


def default_max_absent(axis_name: str | None) -> int | None:
    """The ``max_absent`` the widget and the CLI start from on a slice axis named ``axis_name``: 1 on z
    (a nucleus ends; a track that goes on runs onto the nucleus above or below it: held-out labels 3D Dice
    0.577 -> 0.602 with the shipped model), None (off) on time (an object missed on one frame is still there
    on the next). An unnamed axis counts as z, as in :func:`~napari_sam_stack.io.read_image`."""
    return None if (axis_name or "").lower() in TIME_AXES else 1


def memory_reach(module, num_frames: int) -> tuple[int, int]:
    """How far back (in slices, along the direction of travel) SAM 2 reads.

    Returns ``(memories, pointers)``: a non-conditioning slice at distance ``d`` behind
    the current one is read for its memory features when ``d <= memories`` and for its
    object pointer when ``d <= pointers`` (``_prepare_memory_conditioned_features``).
    """
    n, stride = int(module.num_maskmem), int(module.memory_temporal_stride_for_eval)
    # t_rel == 1 reads the previous slice; t_rel >= 2 reads every stride-th slice, the
    # farthest at most 1 + stride * (num_maskmem - 2) away.
    memories = 0 if n <= 1 else (1 if n == 2 else 1 + stride * (n - 2))
    pointers = min(num_frames, int(module.max_obj_ptrs_in_encoder)) - 1 if module.use_obj_ptrs_in_encoder else 0
    return memories, max(pointers, 0)


@dataclass
class _Track:
    """One object's passes: forward from its anchor, then (when the range goes below it) reverse."""

    obj: int
    idx: int  # the object's index in the inference state
    out: dict  # its output dict (cond / non-cond frame outputs)
    prompted: list[int]  # its prompted slices
    anchor: int  # its first prompted slice, clipped into the range
    redo: bool  # the reverse pass recomputes the anchor (not a prompted slice)
    passes: list = field(default_factory=list)  # remaining [(reverse, range of slices)]
    pos: int = 0  # next position in passes[0]
    absent: int = 0  # consecutive absent slices in the current pass

    @property
    def pin(self) -> bool:
        """Whether a reverse pass follows (it reads the slices just after the anchor)."""
        return any(rev for rev, _ in self.passes)

    def next(self) -> tuple[bool, int] | None:
        if not self.passes:
            return None
        reverse, frames = self.passes[0]
        return reverse, frames[self.pos]

    def yields(self, reverse: bool, frame: int) -> bool:
        """Whether this (pass, slice) gives the object's final value there."""
        if frame != self.anchor:
            return True
        return reverse == self.redo  # the anchor: forward unless the reverse pass recomputes it

    def advance(self) -> bool:
        """Move to the next slice; True when that ended the pass."""
        self.pos += 1
        if self.pos < len(self.passes[0][1]):
            return False
        self.end_pass()
        return True

    def end_pass(self) -> int:
        """Drop the rest of the current pass; return how many of its slices would have been yielded."""
        reverse, frames = self.passes.pop(0)
        left = sum(self.yields(reverse, f) for f in frames[self.pos :])
        self.pos, self.absent = 0, 0
        return left


class Propagation:
    """One propagation run; iterate :meth:`run` for ``(index, {obj_id: logits})``.

    ``max_batch``: the most (slice, object) pairs per batched SAM 2 call; ``1`` runs the
    official ``_run_single_frame_inference`` per pair (the reference path).
    """

    def __init__(self, model, store, prompts: dict[int, dict[int, Prompt]], *, start: int = 0,
                 stop: int | None = None, max_absent: int | None = None, max_batch: int = 16):
        from ._video import StackVideoPredictor

        self.store = store
        self.n = len(store)
        self.start = int(start)
        self.stop = self.n - 1 if stop is None else int(stop)
        if not 0 <= self.start <= self.stop < self.n:
            raise PromptError(f"slice range {self.start}..{self.stop} does not fit {self.n} slices")
        if max_absent is not None and int(max_absent) < 1:
            raise ValueError(f"max_absent must be a positive number of slices (or None), not {max_absent!r}")
        if int(max_batch) < 1:
            raise ValueError(f"max_batch must be a positive number of (slice, object) pairs, not {max_batch!r}")
        self.max_absent = None if max_absent is None else int(max_absent)
        self.max_batch = int(max_batch)
        self.prompts = {int(o): dict(sorted(p.items())) for o, p in prompts.items() if p}
        if not self.prompts:
            raise PromptError("nothing to propagate: no prompts")
        for obj, by_slice in self.prompts.items():
            for i, p in by_slice.items():
                if not 0 <= i < self.n:
                    raise PromptError(f"object {obj} has a prompt on slice {i}, outside 0..{self.n - 1}")
                if p.mask is not None and (p.points is not None or p.box is not None):
                    raise PromptError(
                        f"object {obj}, slice {i}: SAM 2 propagation takes either a mask or points/box on a "
                        "slice, not both"
                    )
                if p.mask is not None and p.mask_is_logits:
                    raise PromptError("a propagation mask prompt must be a binary mask of the slice, not logits")
        self.predictor = StackVideoPredictor.around(model.module)
        self.reach = memory_reach(self.predictor, self.n)
        self.state: dict | None = None
        self.tracks: list[_Track] = []

    # ------------------------------------------------------------------ state
    def _prepare(self) -> None:
        import torch

        lo, hi = self.start, self.stop
        with torch.inference_mode():
            self.state = self.predictor.new_state(self.store)
            for obj, by_slice in self.prompts.items():
                for i, p in by_slice.items():
                    self.predictor.add_prompt(self.state, i, obj, p)
            self.predictor.propagate_in_video_preflight(self.state)
        self.tracks = []
        for obj, by_slice in self.prompts.items():
            idx = self.state["obj_id_to_idx"][obj]
            out = self.state["output_dict_per_obj"][idx]
            anchor = min(max(min(by_slice), lo), hi)
            t = _Track(obj, idx, out, sorted(by_slice), anchor, redo=anchor > lo and anchor not in out["cond_frame_outputs"])
            t.passes.append((False, range(anchor, hi + 1)))
            if anchor > lo:
                t.passes.append((True, range(anchor, lo - 1, -1)))
            self.tracks.append(t)

    def _trim(self, t: _Track, frame: int, reverse: bool) -> None:
        """Forget stored outputs of ``t`` no later slice of it reads (see :func:`memory_reach`)."""
        mem, ptr = self.reach
        pin = not reverse and t.pin  # its reverse pass starts at the anchor and reads the slices after it
        outputs = t.out["non_cond_frame_outputs"]
        for s in list(outputs):
            behind = (s - frame) if reverse else (frame - s)
            ahead_of_anchor = s - t.anchor if pin and s > t.anchor else None
            need_mem = 0 <= behind < mem or (ahead_of_anchor is not None and ahead_of_anchor <= mem)
            need_ptr = 0 <= behind < ptr or (ahead_of_anchor is not None and ahead_of_anchor <= ptr)
            if need_mem:
                continue
            if need_ptr:
                if outputs[s]["maskmem_features"] is not None:
                    outputs[s] = {**outputs[s], **dict.fromkeys(_PTR_ONLY_DROPPED)}
            else:
                del outputs[s]

    def stored_frames(self) -> tuple[int, int]:
        """(slices holding memory features, slices holding only a pointer), all objects."""
        full = ptr_only = 0
        for out_dict in (self.state or {}).get("output_dict_per_obj", {}).values():
            for out in out_dict["non_cond_frame_outputs"].values():
                if out["maskmem_features"] is None:
                    ptr_only += 1
                else:
                    full += 1
        return full, ptr_only

    def will_yield(self, index: int) -> bool:
        """Whether some object still has ``index`` ahead of it in this run (it may stop sooner)."""
        for t in self.tracks:
            for k, (reverse, frames) in enumerate(t.passes):
                if index in frames[t.pos if k == 0 else 0 :] and t.yields(reverse, index):
                    return True
        return False

    # ------------------------------------------------------------------ running
    def run(self, progress: Callable[[int, int], Any] | None = None,
            cancel: Callable[[], bool] | None = None) -> Iterator[tuple[int, dict[int, np.ndarray]]]:
        """Yield ``(slice index, {obj_id: (Y, X) float32 logits})`` as (slice, object) pairs finish.

        Every pair is yielded once; a slice comes again (with other objects) when objects
        reach it at different steps. ``progress(done, total)`` counts pairs.
        """
        if cancel is not None and cancel():
            raise Cancelled("propagation cancelled")
        self._prepare()
        self.total = len(self.tracks) * (self.stop - self.start + 1)
        self.done, self._shrink, last = 0, 0, None
        try:
            while any(t.passes for t in self.tracks):
                if cancel is not None and cancel():
                    raise Cancelled("propagation cancelled")
                for index, logits in self._step():
                    if cancel is not None and cancel():  # between the slices of a step, too
                        raise Cancelled("propagation cancelled")
                    self.done += len(logits)
                    if progress is not None:
                        last = (self.done, self.total)
                        progress(*last)
                    yield index, logits
                self.total -= self._shrink  # objects that ended in this step (after its slices are reported)
                self._shrink = 0
            if progress is not None and last != (self.done, self.total):
                progress(self.done, self.total)  # an early stop shortened the run
        finally:
            self.state["cached_features"].clear()

    def _step(self) -> list[tuple[int, dict[int, np.ndarray]]]:
        """Every object's next slice: prompted slices as stored, the others tracked in one batch."""
        import torch

        from ._batch import Item, track

        finished: list[tuple[_Track, int, Any]] = []  # (track, slice, low-res logits) to yield
        todo: list[tuple[_Track, bool, int]] = []
        with torch.inference_mode():
            for t in self.tracks:
                while (nxt := t.next()) is not None:
                    reverse, frame = nxt
                    cond = t.out["cond_frame_outputs"].get(frame)
                    if cond is None:
                        todo.append((t, reverse, frame))
                        break
                    if self.predictor.clear_non_cond_mem_around_input:
                        self.predictor._clear_obj_non_cond_mem_around_input(self.state, frame, t.idx)
                    self._finish(t, reverse, frame, cond["pred_masks"], cond["object_score_logits"], finished)
            self.predictor.keep_features(self.state, {f for _, _, f in todo})
            items = [Item(t.out, frame, reverse) for t, reverse, frame in todo]
            if self.max_batch == 1:
                results = [self._official(it) for it in items]
            else:
                results = track(self.predictor, self.state, items, self.max_batch)
            for (t, reverse, frame), (stored, pred) in zip(todo, results):
                t.out["non_cond_frame_outputs"][frame] = stored
                self._trim(t, frame, reverse)
                self._finish(t, reverse, frame, pred, stored["object_score_logits"], finished)
            if not finished:
                return []
            by_slice: dict[int, dict[int, np.ndarray]] = {}
            masks = torch.cat([pred.to(self.state["device"]) for _, _, pred in finished], dim=0)
            video = self._video_res(masks)
            for j, (t, frame, _) in enumerate(finished):
                by_slice.setdefault(frame, {})[t.obj] = video[j, 0].float().cpu().numpy()
        return sorted(by_slice.items())

    def _video_res(self, masks):
        """Logits at the slice's size (``_get_orig_video_res_output``) of independent objects.

        Its cross-object ``non_overlap_masks`` is off here: for one object (each object's
        own run) it is a no-op officially.
        """
        if masks.shape[0] == 1:
            return self.predictor._get_orig_video_res_output(self.state, masks)[1]
        saved, self.predictor.non_overlap_masks = self.predictor.non_overlap_masks, False
        try:
            return self.predictor._get_orig_video_res_output(self.state, masks)[1]
        finally:
            self.predictor.non_overlap_masks = saved

    def _official(self, it) -> tuple[dict, Any]:
        """The official per-object step (batch of one), for ``max_batch=1``."""
        out, pred = self.predictor._run_single_frame_inference(
            inference_state=self.state, output_dict=it.output_dict, frame_idx=it.frame, batch_size=1,
            is_init_cond_frame=False, point_inputs=None, mask_inputs=None, reverse=it.reverse, run_mem_encoder=True,
        )
        return {**out, "pred_masks": None}, pred

    def _finish(self, t: _Track, reverse: bool, frame: int, pred, score, finished: list) -> None:
        """Record ``t``'s result on ``frame``, advance it, and stop its pass where it ends (``max_absent``)."""
        if reverse and frame == t.anchor and not t.redo:
            t.advance()  # the anchor's prompt output, already yielded by the forward pass
            return
        if t.yields(reverse, frame):
            finished.append((t, frame, pred))
        t.absent = 0 if float(score.max()) > 0 else t.absent + 1
        stop = self.max_absent is not None and t.absent >= self.max_absent and not self._prompt_ahead(t, frame, reverse)
        if not t.advance() and stop:
            self._shrink += t.end_pass()  # the object ended here: the rest of this pass is not computed

    def _prompt_ahead(self, t: _Track, frame: int, reverse: bool) -> bool:
        lo, hi = self.start, self.stop
        if reverse:
            return any(lo <= i < frame for i in t.prompted)
        return any(frame < i <= hi for i in t.prompted)


def iter_propagate(model, store, prompts: dict[int, dict[int, Prompt]], *, start: int = 0, stop: int | None = None,
                   max_absent: int | None = None, progress: Callable[[int, int], Any] | None = None,
                   cancel: Callable[[], bool] | None = None,
                   max_batch: int = 16) -> Iterator[tuple[int, dict[int, np.ndarray]]]:
    """Propagate every object's prompts through ``store``'s slices with SAM 2, each object on its own.

    ``prompts``: ``{obj_id: {slice: Prompt}}`` (all of an object's prompts condition it);
    ``start``/``stop``: the slices to compute, inclusive; each object is tracked from its
    own first prompted slice (clipped into the range) forward, then in reverse from it.
    ``max_absent``: an object stops in a direction after that many consecutive slices where
    SAM 2 says it is absent (object score <= 0), once no prompt of its own lies ahead.
    Yields ``(index, {obj_id: (Y, X) float32 logits})``: every (slice, object) pair once, a
    slice possibly several times with different objects; ``progress(done, total)`` counts
    pairs; ``cancel()`` returning True raises :class:`Cancelled`.
    """
    prop = Propagation(model, store, prompts, start=start, stop=stop, max_absent=max_absent, max_batch=max_batch)
    yield from prop.run(progress=progress, cancel=cancel)
