"""SAM 2 propagation through a z-stack or time series, over cached embeddings.

Each run starts from a fresh state holding every stored prompt, so adding or removing a
prompt and propagating again gives what SAM 2 gives for those prompts. The official
recipe is followed: ``propagate_in_video`` forward from the first prompted slice, then in
reverse from it; the numbers equal ``SAM2VideoPredictor``'s (see tests/test_propagate.py).

Differences from the official predictor, none of which changes a number:
- frames are read lazily from the embeddings store, never re-encoded;
- memory stays bounded: only what later slices read is kept (conditioning slices, the
  last memories and object pointers in the direction of travel, and the ones just after
  the start slice that the reverse pass reads);
- each slice is yielded once; where the reverse pass recomputes the start slice (an
  object prompted only elsewhere) its final, reverse value is the one yielded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .errors import Cancelled, PromptError
from .prompts import Prompt

_PTR_ONLY_DROPPED = ("maskmem_features", "maskmem_pos_enc", "pred_masks")


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


class Propagation:
    """One propagation run; iterate :meth:`run` for ``(index, {obj_id: logits})``."""

    def __init__(self, model, store, prompts: dict[int, dict[int, Prompt]], *, start: int = 0,
                 stop: int | None = None, max_absent: int | None = None):
        from ._video import StackVideoPredictor

        self.store = store
        self.n = len(store)
        self.start = int(start)
        self.stop = self.n - 1 if stop is None else int(stop)
        if not 0 <= self.start <= self.stop < self.n:
            raise PromptError(f"slice range {self.start}..{self.stop} does not fit {self.n} slices")
        if max_absent is not None and int(max_absent) < 1:
            raise ValueError(f"max_absent must be a positive number of slices (or None), not {max_absent!r}")
        self.max_absent = None if max_absent is None else int(max_absent)
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
        self.prompted = sorted({i for p in self.prompts.values() for i in p})
        self.anchor = min(max(self.prompted[0], self.start), self.stop)
        self.predictor = StackVideoPredictor.around(model.module)
        self.reach = memory_reach(self.predictor, self.n)
        self.state: dict | None = None

    # ------------------------------------------------------------------ state
    def _prepare(self) -> None:
        import torch

        with torch.inference_mode():
            self.state = self.predictor.new_state(self.store)
            for obj, by_slice in self.prompts.items():
                for i, p in by_slice.items():
                    self.predictor.add_prompt(self.state, i, obj, p)
            self.predictor.propagate_in_video_preflight(self.state)

    def _trim(self, frame: int, reverse: bool, forward_pass: bool) -> None:
        """Forget stored outputs no later slice reads (see :func:`memory_reach`)."""
        mem, ptr = self.reach
        for out_dict in self.state["output_dict_per_obj"].values():
            outputs = out_dict["non_cond_frame_outputs"]
            for t in list(outputs):
                behind = (t - frame) if reverse else (frame - t)
                # the reverse pass starts at the anchor and reads the slices after it
                ahead_of_anchor = t - self.anchor if forward_pass and self._pin and t > self.anchor else None
                need_mem = 0 <= behind < mem or (ahead_of_anchor is not None and ahead_of_anchor <= mem)
                need_ptr = 0 <= behind < ptr or (ahead_of_anchor is not None and ahead_of_anchor <= ptr)
                if need_mem:
                    continue
                if need_ptr:
                    if outputs[t]["maskmem_features"] is not None:
                        outputs[t] = {**outputs[t], **dict.fromkeys(_PTR_ONLY_DROPPED)}
                else:
                    del outputs[t]

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

    # ------------------------------------------------------------------ running
    def run(self, progress: Callable[[int, int], Any] | None = None,
            cancel: Callable[[], bool] | None = None) -> Iterator[tuple[int, dict[int, np.ndarray]]]:
        """Yield ``(slice index, {obj_id: (Y, X) float32 logits})`` as slices finish."""
        import torch

        if cancel is not None and cancel():
            raise Cancelled("propagation cancelled")
        self._prepare()
        a, lo, hi = self.anchor, self.start, self.stop
        ids, objs = self.state["obj_ids"], self.state["output_dict_per_obj"].values()
        # the reverse pass recomputes the anchor for objects not prompted there
        redo_anchor = a > lo and any(a not in o["cond_frame_outputs"] for o in objs)
        forward = list(range(a, hi + 1))
        backward = list(range(a, lo - 1, -1)) if a > lo else []
        self._pin = bool(backward)
        total = hi - lo + 1  # every slice of the range is yielded once
        done, last = 0, None
        for reverse, order in ((False, forward), (True, backward)):
            absent = 0
            for k, frame in enumerate(order):
                if cancel is not None and cancel():
                    raise Cancelled("propagation cancelled")
                if reverse and frame == a and not redo_anchor:
                    continue
                with torch.inference_mode():
                    video_res, scores = self.predictor.track_frame(self.state, frame, reverse)
                    self._trim(frame, reverse, forward_pass=not reverse)
                    logits = {o: video_res[j, 0].float().cpu().numpy() for j, o in enumerate(ids)}
                del video_res
                if not (frame == a and redo_anchor and not reverse):
                    done += 1
                    if progress is not None:
                        last = (done, total)
                        progress(done, total)
                    yield frame, logits
                absent = 0 if any(s > 0 for s in scores) else absent + 1
                if self.max_absent is not None and absent >= self.max_absent and not self._prompt_ahead(frame, reverse):
                    total -= len(order) - k - 1  # not computed: the run ends sooner
                    break
        if progress is not None and last != (done, total):
            progress(done, total)  # an early stop shortened the run
        self.state["cached_features"].clear()

    def _prompt_ahead(self, frame: int, reverse: bool) -> bool:
        lo, hi = self.start, self.stop
        if reverse:
            return any(lo <= i < frame for i in self.prompted)
        return any(frame < i <= hi for i in self.prompted)


def iter_propagate(model, store, prompts: dict[int, dict[int, Prompt]], *, start: int = 0, stop: int | None = None,
                   max_absent: int | None = None, progress: Callable[[int, int], Any] | None = None,
                   cancel: Callable[[], bool] | None = None) -> Iterator[tuple[int, dict[int, np.ndarray]]]:
    """Propagate every object's prompts through ``store``'s slices with SAM 2.

    ``prompts``: ``{obj_id: {slice: Prompt}}`` (all honoured, as conditioning slices);
    ``start``/``stop``: the slices to compute, inclusive; tracking starts at the first
    prompted slice (clipped into the range) and runs forward, then in reverse from it.
    ``max_absent``: stop a direction after that many consecutive slices where SAM 2 says
    every object is absent (object score <= 0), once no prompted slice lies ahead.
    Yields ``(index, {obj_id: (Y, X) float32 logits})`` as slices finish, each slice once;
    ``progress(done, total)``; ``cancel()`` returning True raises :class:`Cancelled`.
    """
    prop = Propagation(model, store, prompts, start=start, stop=stop, max_absent=max_absent)
    yield from prop.run(progress=progress, cancel=cancel)
