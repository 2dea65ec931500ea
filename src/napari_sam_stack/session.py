"""Session: one image + one model + embeddings + prompts per object + results.

The object users script against in the napari console, notebooks and the CLI;
the napari widget is a view over one. Coordinates follow napari: (slice, row, col).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .embeddings import EmbeddingStore
from .errors import ModelFamilyError, PromptError
from .models import LoadedModel, load_model
from .normalise import Frames
from ._validate import flag, integer, object_id
from .prompts import Prompt, float_array, make_prompt


class Session:
    """Segment one image or stack with one model.

    ``image``: (N, Y, X) or (N, Y, X, C) with ``axis=0`` (any slice axis works), or a
    single (Y, X) / (Y, X, 3) image with ``axis=None``. numpy, dask and zarr arrays are
    read slice by slice. ``model``: a :class:`~napari_sam_stack.models.LoadedModel` or
    anything :func:`~napari_sam_stack.load_model` accepts (a registry name, a module).
    Embeddings are cached on disk under ``cache_dir`` (default: the per-user cache)
    unless ``in_memory=True``; ``dtype="float16"`` halves the cache, ``lru_slices``
    slices stay in RAM (see :class:`~napari_sam_stack.embeddings.EmbeddingStore`).
    Further keywords go to :class:`~napari_sam_stack.normalise.Frames` (``fixed``,
    ``channel_axis``, ``channel``, ``contrast_limits``).
    """

    def __init__(
        self,
        image: Any,
        model: Any,
        axis: int | None = 0,
        *,
        cache_dir=None,
        in_memory: bool = False,
        sam2_resize: str | None = None,
        dtype: str = "float32",
        lru_slices: int = 4,
        **frames_options,
    ):
        self.model: LoadedModel = model if isinstance(model, LoadedModel) else load_model(model)
        self.frames = Frames(image, axis, **frames_options)
        self.axis = self.frames.axis
        if sam2_resize is None:
            sam2_resize = "image" if self.axis is None else "video"
        self.embeddings = EmbeddingStore(
            self.frames, self.model, sam2_resize=sam2_resize, cache_dir=cache_dir, in_memory=in_memory,
            dtype=dtype, lru_slices=lru_slices,
        )
        self.prompts: dict[int, dict[int, Prompt]] = {}

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return len(self.frames)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(slices, rows, cols) of the label array this session produces."""
        return (len(self), *self.frames.frame_shape)

    def __repr__(self) -> str:
        return f"Session({self.shape[0]} slices of {self.shape[1]}x{self.shape[2]}, {self.model!r}, objects={sorted(self.prompts)})"

    def _index(self, index: int) -> int:
        n = len(self)
        i = integer(index, "slice index")  # (not True, 1.5 or "1")
        if not 0 <= i < n:
            raise PromptError(f"slice index {index} is out of range: this image has {n} slice(s) (0..{n - 1})")
        return i

    # ------------------------------------------------------------------ embeddings
    def compute_embeddings(
        self, progress: Callable[[int, int], Any] | None = None, cancel: Callable[[], bool] | None = None, *,
        client=None, **kw
    ) -> bool:
        """Encode every slice once (cached); ``progress(done, total)``; ``cancel()`` returning True stops.

        ``client``: a ``dask.distributed.Client``: the slices are encoded on its workers into
        the same on-disk cache (see :mod:`napari_sam_stack.distributed`).
        Returns True when every slice is embedded, False when cancelled (what finished is kept).
        """
        if client is not None:
            from .distributed import compute_embeddings

            return compute_embeddings(self, client, progress=progress, cancel=cancel, **kw)
        return self.embeddings.compute(progress=progress, cancel=cancel, **kw)

    # ------------------------------------------------------------------ 2D
    def predict(self, index: int = 0, points=None, point_labels=None, box=None, mask=None, multimask: bool | None = None):
        """Masks for a prompt on one slice: one decoder call on the cached embedding.

        ``multimask=None`` follows SAM's advice: three candidates for a single point,
        one mask otherwise. Returns a :class:`~napari_sam_stack.predict.Prediction`.
        """
        from .predict import predict

        i = self._index(index)
        multimask = flag(multimask, "multimask", allow_none=True)
        prompt = make_prompt(self.frames.frame_shape, _in_slice(points, i), point_labels, box, mask)
        return predict(self.model, self.embeddings.get(i), prompt, multimask=multimask)

    # ------------------------------------------------------------------ objects
    def add_prompt(self, obj_id: int, index: int, points=None, point_labels=None, box=None, mask=None) -> None:
        """Set the prompt of object ``obj_id`` on slice ``index`` (replacing an earlier one there)."""
        obj = _obj_id(obj_id)
        i = self._index(index)
        prompt = make_prompt(self.frames.frame_shape, _in_slice(points, i), point_labels, box, mask)
        if prompt.mask is not None and prompt.mask_is_logits:
            raise PromptError("a propagation mask prompt must be a binary mask of the slice, not low-res logits")
        if prompt.mask is not None and not (prompt.points is None and prompt.box is None):
            raise PromptError("SAM 2 takes either a mask or points/box for an object on one slice, not both")
        self.prompts.setdefault(obj, {})[i] = prompt

    def remove_prompt(self, obj_id: int, index: int | None = None) -> None:
        """Forget the prompt of ``obj_id`` on slice ``index`` (all its slices when ``index`` is None)."""
        obj = _obj_id(obj_id)
        if obj not in self.prompts:
            return
        if index is None:
            del self.prompts[obj]
            return
        self.prompts[obj].pop(self._index(index), None)
        if not self.prompts[obj]:
            del self.prompts[obj]

    def clear_prompts(self) -> None:
        self.prompts.clear()

    # ------------------------------------------------------------------ 3D
    def iter_propagate(
        self,
        progress: Callable[[int, int], Any] | None = None,
        cancel: Callable[[], bool] | None = None,
        *,
        start: int | None = None,
        stop: int | None = None,
        max_absent: int | None = None,
        obj_ids=None,
        max_batch: int = 16,
    ) -> Iterator[tuple[int, dict[int, np.ndarray]]]:
        """Propagate the objects' prompts through the slices with SAM 2 memory attention.

        Every object (all, or those in ``obj_ids``) is tracked on its own, as SAM 2 tracks
        it alone: forward from its own first prompted slice (clipped into
        ``start..stop``), then in reverse from it, all of its prompts conditioning. The
        objects run in one batched pass (``max_batch`` (slice, object) pairs per SAM 2
        call); an object's logits equal a run of that object alone (``obj_ids=[o]``).

        Yields ``(index, {obj_id: (Y, X) float32 logits})``: every (slice, object) pair
        in the range is yielded once, with its final value; a slice may come several
        times, each time with other objects (with one object, each slice once).
        ``progress(done, total)`` counts pairs. ``max_absent``: an object stops in a
        direction after that many consecutive slices where SAM 2 says it is absent, once
        no prompt of its own lies ahead. ``cancel()`` returning True raises
        :class:`~napari_sam_stack.errors.Cancelled`. See docs/propagation.md.

        Checks happen here, at the call; the prompts are copied, so editing them while the
        iterator runs (another thread, the widget) does not change this run.
        """
        return self._propagation(start, stop, max_absent, obj_ids, max_batch).run(progress=progress, cancel=cancel)

    def _propagation(self, start, stop, max_absent, obj_ids, max_batch):
        from .propagate import Propagation

        if self.model.family != "sam2":
            raise ModelFamilyError(
                "propagation needs a SAM 2 model (e.g. 'sam2.1_hiera_tiny'); SAM 1 segments one slice at a time."
            )
        wanted = self.prompts if obj_ids is None else {_obj_id(o): None for o in obj_ids}
        prompts = {o: dict(self.prompts[o]) for o in wanted if o in self.prompts}
        if not prompts:
            raise PromptError("nothing to propagate: add a prompt first (Session.add_prompt(obj_id, index, points=...))")
        lo = 0 if start is None else self._index(start)
        hi = len(self) - 1 if stop is None else self._index(stop)
        if hi < lo:
            raise PromptError(f"empty range: start={lo} > stop={hi}")
        return Propagation(self.model, self.embeddings, prompts, start=lo, stop=hi, max_absent=max_absent,
                           max_batch=max_batch)

    def propagate(self, progress=None, cancel=None, *, start: int | None = None, stop: int | None = None,
                  max_absent: int | None = None, obj_ids=None, max_batch: int = 16) -> np.ndarray:
        """Propagate and return (N, Y, X) uint32 labels (0 = background).

        Where objects overlap, a pixel goes to the object prompted nearest to its slice,
        then to the highest positive logit (:func:`labels_from_logits`, over every object
        that reached the slice). Slices outside the range or never reached stay 0. A
        cancelled run raises :class:`~napari_sam_stack.errors.Cancelled` and returns nothing
        partial. Besides the labels, the winner's logit and prompt distance are kept for
        slices that objects still have ahead of them (at most two arrays of the labels' size).
        """
        run = self._propagation(start, stop, max_absent, obj_ids, max_batch)
        anchors = {o: sorted(p) for o, p in self.prompts.items()}
        labels = np.zeros(self.shape, dtype=np.uint32)
        best: dict[int, tuple] = {}  # slice -> (winning logit, its prompt distance) so far, while objects may come
        for index, logits in run.run(progress=progress, cancel=cancel):
            win = best.pop(index, None) or _fresh(self.frames.frame_shape)
            _merge_logits(labels[index], win, logits, index, anchors)
            if run.will_yield(index):
                best[index] = win
        return labels


def labels_from_logits(logits_by_obj: dict[int, np.ndarray], shape, dtype=np.uint32, *, index: int = 0,
                       anchors=None) -> np.ndarray:
    """One slice (``index``) of labels: each pixel gets, among the objects with a positive logit
    there, the one prompted nearest to ``index`` (``anchors``: obj id -> prompted slices; none:
    all equal), then the one with the highest logit (ties: the earlier object)."""
    out = np.zeros(shape, dtype)
    if logits_by_obj:
        _merge_logits(out, _fresh(shape), logits_by_obj, index, anchors)
    return out


def _fresh(shape) -> tuple[np.ndarray, np.ndarray]:
    from ._masks import FAR

    return np.zeros(shape, np.float32), np.full(shape, FAR, np.int32)


def _merge_logits(labels: np.ndarray, win: tuple, logits_by_obj: dict[int, np.ndarray], index: int = 0,
                  anchors=None) -> None:
    """Give each pixel of ``labels`` (in place) to the object that beats ``win`` = (logit, prompt
    distance) so far there (updated in place): a positive logit, prompted nearer, or as near with a
    higher logit (ties: the earlier object). The rule of :func:`._masks.winners`, on float logits."""
    from ._masks import claims, prompt_distance

    value, near = win
    for o, v in logits_by_obj.items():
        v = np.asarray(v, np.float32)
        d = prompt_distance(anchors, o, index)
        won = claims(v, d, value, near)
        labels[won] = o
        value[won] = v[won]
        near[won] = d


def _in_slice(points, index: int):
    """(row, col) points as they are; (slice, row, col) points (napari's 3D coordinates) must
    lie on slice ``index`` and lose their first column."""
    if points is None:
        return None
    p = float_array(points, "points")
    if p.ndim == 2 and p.shape[1] == 3:
        off = np.round(p[:, 0]) != index
        if off.any():
            raise PromptError(f"point {p[np.argmax(off)].tolist()} is on slice {p[np.argmax(off), 0]:g}, not on slice {index}")
        return p[:, 1:]
    return points


def _obj_id(obj_id) -> int:
    return object_id(obj_id)  # 1..2**32-1 (uint32 labels); not True, 1.5 or "1"
