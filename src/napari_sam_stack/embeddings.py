"""Per-slice image-encoder outputs, computed once and cached on disk.

:class:`Embedding` and :func:`preprocess` (in :mod:`._encoder`) feed the encoder
exactly as the official predictors do: SAM 1's ``SamPredictor.set_image``
features, SAM 2's raw ``forward_image`` output ("video" preprocessing as
``SAM2VideoPredictor`` loads frames, "image" as ``SAM2ImagePredictor.set_image``).

:class:`EmbeddingStore` runs the encoder and keeps its output in a zarr cache (see
:mod:`._cache`) keyed by a sampled signature of the image, the model, preprocessing
and package version; every cached slice is checked against the image's current
pixels when read. :func:`cache_info` and :func:`clear_cache` show and free it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque

import numpy as np

from ._cache import CorruptCacheWarning, SliceCache, StaleCacheWarning, cache_signature, pixel_digest, resolve_root
from ._cache_admin import cache_info, clear_cache
from ._encoder import Embedding, forward, from_arrays, level_tensors, preprocess, to_arrays
from ._validate import flag, integer
from .errors import CacheError, ImageError
from .models import LoadedModel
from .normalise import slice_index

__all__ = ["Embedding", "EmbeddingStore", "preprocess", "cache_info", "clear_cache", "CorruptCacheWarning",
           "StaleCacheWarning"]


class EmbeddingStore:
    """Embeddings of every slice of a :class:`~napari_sam_stack.normalise.Frames`, each computed once.

    ``get(i)`` returns slice ``i``'s :class:`Embedding`, computing just that slice when it
    is not cached yet; ``compute()`` fills the cache in batches. Both may run at the same
    time from different threads (e.g. a background precompute and a click): a slice is
    never encoded twice, and ``get`` of a computed slice never waits for a running batch.

    By default the embeddings live in an on-disk zarr cache under ``cache_dir``
    (default ``<user cache>/embeddings``, moved by ``$NAPARI_SAM_STACK_CACHE``), in a
    folder keyed by the image (a sampled content hash), model identity, preprocessing,
    storage dtype and package version, so a stack reopened later (or by another process)
    is not encoded again, and a killed run resumes where it stopped. Each slice records
    the SHA-256 of the pixels it was encoded from; a slice read from disk whose pixels
    differ now is recomputed (:class:`StaleCacheWarning`). A few recently used slices
    (``lru_slices``) stay in memory. ``in_memory=True`` keeps every slice in RAM instead
    and touches no disk. A cache that cannot be used (a file in the way, read-only, not
    ours) gives one warning and the store carries on in memory: ``on_disk`` is then False
    and ``fallback_reason`` says why.

    ``dtype="float16"`` halves the disk cache (relative error 2.1e-4, see docs/embeddings.md);
    the default is float32, and in-memory stores always keep float32.
    """

    def __init__(
        self,
        frames,
        model: LoadedModel,
        sam2_resize: str = "video",
        cache_dir=None,
        in_memory: bool = False,
        *,
        dtype: str = "float32",
        lru_slices: int = 4,
    ):
        if sam2_resize not in ("video", "image"):
            raise ImageError(f"sam2_resize must be 'video' or 'image', not {sam2_resize!r}")
        if str(dtype) not in ("float32", "float16"):
            raise CacheError(f"dtype must be 'float32' or 'float16', not {dtype!r}")
        self.in_memory = flag(in_memory, "in_memory", error=CacheError)
        root = None if self.in_memory else resolve_root(cache_dir)  # "" is an error, before any work
        self.frames = frames
        self.model = model
        self.sam2_resize = sam2_resize
        self.dtype = str(dtype)
        self.lru_slices = max(1, integer(lru_slices, "lru_slices", CacheError))
        self.encoder_calls = 0  # encoder forward passes (one per batch)
        self.encoded_slices = 0
        self._n = len(frames)
        self._original_size = tuple(int(s) for s in frames.frame_shape)
        self._lock = threading.RLock()  # _mem, _inflight, _pos
        self._io_lock = threading.Lock()  # cache creation and writes
        self._mem: OrderedDict[int, Embedding] = OrderedDict()
        self._inflight: dict[int, threading.Event] = {}
        self._pos: list | None = None  # SAM 2 positional encodings, shared by every slice
        self.signature: dict | None = None
        self._disk: SliceCache | None = None
        self.fallback_reason: str | None = None  # why a disk cache asked for is not used
        if not self.in_memory:
            self.signature = cache_signature(frames, model, sam2_resize, self.dtype)
            self._disk = SliceCache(root, self.signature, self._n)
            self._disk.open()
            if self._disk.unusable is not None:
                self._fall_back_to_memory(self._disk.unusable)

    # ------------------------------------------------------------------ queries
    def __len__(self) -> int:
        return self._n

    @property
    def path(self):
        """The cache folder of this stack (None with ``in_memory=True`` or after falling back to memory)."""
        disk = self._disk
        return None if disk is None else disk.path

    @property
    def on_disk(self) -> bool:
        """True while embeddings go to the disk cache; False in memory (asked for, or fallen back
        to because the cache cannot be written: see ``fallback_reason``)."""
        return self._disk is not None

    def _check(self, index) -> int:
        return slice_index(index, self._n)

    def _is_done(self, i: int) -> bool:
        return i in self._mem or (self._disk is not None and self._disk.is_done(i))

    def is_computed(self, index: int) -> bool:
        """True when slice ``index`` is cached (in memory, or complete on disk; its pixels are
        checked when it is read)."""
        i = self._check(index)
        with self._lock:
            return self._is_done(i)

    def computed(self) -> list[int]:
        """Indices of the cached slices."""
        with self._lock:
            done = set(self._mem) | (self._disk.done() if self._disk is not None else set())
        return sorted(done)

    # ------------------------------------------------------------------ get
    def get(self, index: int) -> Embedding:
        """Slice ``index``'s embedding, computed now (that slice only) if it is not cached."""
        i = self._check(index)
        reread = False
        while True:  # each round returns, waits for another thread's claim (always released), or encodes
            with self._lock:
                emb = self._mem.get(i)
                if emb is not None:
                    self._mem.move_to_end(i)
                    return emb
                event = self._inflight.get(i)
            if event is not None:  # being encoded by another thread: wait for it
                event.wait()
                continue
            emb = self._load(i)
            if emb is not None:
                with self._lock:
                    self._remember(i, emb)
                return emb
            with self._lock:
                if i in self._inflight or i in self._mem:
                    continue
                if not reread and self._is_done(i):  # finished on disk meanwhile: read it once more
                    reread = True
                    continue
                self._inflight[i] = threading.Event()  # not readable from disk: encode it (never loop)
            self._run([i], keep=True)

    def _remember(self, i: int, emb: Embedding) -> None:
        self._mem[i] = emb
        self._mem.move_to_end(i)
        while not self.in_memory and len(self._mem) > self.lru_slices:
            self._mem.popitem(last=False)

    def _claim(self, i: int) -> bool:
        """Mark slice ``i`` as being encoded by the caller (lock held); False if done or taken."""
        if i in self._inflight or self._is_done(i):
            return False
        self._inflight[i] = threading.Event()
        return True

    def _load(self, i: int) -> Embedding | None:
        """Slice ``i`` from disk if it is there, intact and encoded from the image's current pixels."""
        disk = self._disk  # (set to None by a failed write in another thread)
        recorded = None if disk is None else disk.recorded(i)
        if recorded is None:
            return None
        if recorded != pixel_digest(self.frames.raw(i)):
            import warnings

            warnings.warn(
                f"embeddings cache {disk.path}: slice {i} was encoded from other pixels than the image has now; "
                "recomputing it", StaleCacheWarning, stacklevel=3,
            )
            disk.forget(i)
            return None
        arrays = disk.read(i)
        if arrays is None or disk.recorded(i) != recorded:  # damaged, or rewritten meanwhile by another process
            return None
        return self._from_arrays(arrays, disk)

    # ------------------------------------------------------------------ compute
    def compute(self, indices=None, progress=None, cancel=None, batch_size: int = 1) -> bool:
        """Encode the slices not cached yet (all, or ``indices``), ``batch_size`` per encoder call.

        Slices already cached are trusted here (their pixels are checked when they are
        read). Pipelined: the next batch is read and preprocessed, and the previous one written
        to the cache, while the encoder runs. ``progress(done, total)`` is called at the
        start and as batches are stored; ``cancel()`` is checked before every batch:
        returning True stops, keeping what finished (the call then returns False; True
        when everything asked for is computed).
        """
        from concurrent.futures import ThreadPoolExecutor, wait

        idx = range(self._n) if indices is None else [self._check(i) for i in indices]
        with self._lock:
            pending = deque(i for i in dict.fromkeys(idx) if not self._is_done(i))
        total, size = len(pending), max(1, int(batch_size))
        done, waits = [0], []

        def report(k: int) -> None:
            done[0] += k
            if progress is not None and k:
                progress(done[0], total)

        def take(block: bool) -> list[int]:
            """Claim the next batch. Slices being encoded by another thread (a click, another
            compute) are awaited only once nothing else is left, and only when ``block`` (the
            caller then holds no claimed, unencoded slice: two computes never wait on each other)."""
            while True:
                batch, skipped = [], 0
                with self._lock:
                    while pending and len(batch) < size:
                        i = pending.popleft()
                        if self._is_done(i):
                            skipped += 1
                        elif i in self._inflight:
                            waits.append((i, self._inflight[i]))
                        elif self._claim(i):
                            batch.append(i)
                report(skipped)
                if batch or not waits or not block:
                    return batch
                for i, event in waits:
                    event.wait()
                    pending.append(i)  # counted as done by the next round when it finished
                waits.clear()

        if progress is not None:
            progress(0, total)
        pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="napari-sam-stack-embeddings")
        current = ahead = writing = None

        def start(block: bool):
            batch = take(block)
            return (batch, pool.submit(self._prepare, batch)) if batch else None

        try:
            ahead = start(block=True)
            while ahead is not None:
                (current, prepared), ahead = ahead, None
                if cancel is not None and cancel():
                    if writing is not None:
                        writing[1].result()
                        report(len(writing[0]))
                        writing = None
                    return False
                x, input_size, digests = prepared.result()
                ahead = start(block=False)  # read + preprocess the next batch while this one encodes
                embs = self._encode(x, input_size)
                if writing is not None:
                    writing[1].result()
                    report(len(writing[0]))
                writing = (current, pool.submit(self._store, current, embs, digests, self.in_memory))
                current = None
                if ahead is None:
                    ahead = start(block=True)
            if writing is not None:
                writing[1].result()
                report(len(writing[0]))
                writing = None
            return True
        finally:
            pending_futures = [f for f in (ahead and ahead[1], writing and writing[1]) if f is not None]
            wait(pending_futures)
            pool.shutdown(wait=True)
            self._release(current or [])
            self._release(ahead[0] if ahead else [])

    def _run(self, batch: list[int], keep: bool) -> None:
        """Encode claimed slices now (in this thread), write them to the cache, release them."""
        try:
            x, input_size, digests = self._prepare(batch)
            embs = self._encode(x, input_size)
        except BaseException:
            self._release(batch)
            raise
        self._store(batch, embs, digests, keep)

    def _prepare(self, batch: list[int]):
        """Read the slices once: the encoder input, input size and (with a disk cache) their pixel digests."""
        if self._disk is None:
            frames, digests = [self.frames[i] for i in batch], None
        else:
            raws = [self.frames.raw(i) for i in batch]
            digests = [pixel_digest(r) for r in raws]
            frames = [self.frames.to_rgb8(r) for r in raws]
        return (*preprocess(self.model, frames, self.sam2_resize), digests)

    def _encode(self, x, input_size) -> list[Embedding]:
        embs = forward(self.model, x, self._original_size, input_size)
        with self._lock:
            self.encoder_calls += 1
            self.encoded_slices += len(embs)
        return embs

    def _store(self, batch: list[int], embs: list[Embedding], digests: list[str] | None, keep: bool) -> None:
        """Write encoded slices to the cache (data, then done markers); keep them in memory if asked."""
        try:
            if self.model.family == "sam2":
                with self._lock:
                    if self._pos is None:
                        self._pos = [p.clone() for p in embs[0].vision_pos_enc]
                    for e in embs:
                        e.vision_pos_enc = list(self._pos)
            disk = self._disk if digests is not None else None  # (no digests: prepared without a disk)
            keep = keep or disk is None  # (the disk may have failed in another thread since: keep them)
            if disk is not None:
                arrays = [to_arrays(self.model, e, self.dtype) for e in embs]
                try:
                    with self._io_lock:
                        if not disk.open():
                            self._create(disk, embs[0])
                        for i, a, d in zip(batch, arrays, digests):
                            disk.write(i, a, d)
                        if disk.shared_damaged:
                            disk.repair_shared(self._shared_arrays(embs[0]))
                except Exception as err:  # read-only or full disk, damaged metadata: carry on in memory
                    keep = self._fall_back_to_memory(f"{type(err).__name__}: {err}")
                else:
                    if keep:  # exactly what a reader of the cache gets
                        embs = [self._from_arrays(a, disk) for a in arrays]
            if keep:
                with self._lock:
                    for i, e in zip(batch, embs):
                        self._remember(i, e)
        finally:
            self._release(batch)

    def _fall_back_to_memory(self, reason: str) -> bool:
        import warnings

        with self._lock:
            if self._disk is not None:
                warnings.warn(
                    f"cannot write the embeddings cache at {self._disk.path} ({reason}); keeping embeddings in memory "
                    "instead (pass cache_dir=... to use another folder)", RuntimeWarning, stacklevel=4,
                )
                self._disk, self.in_memory, self.fallback_reason = None, True, reason
        return True

    def _release(self, batch: list[int]) -> None:
        with self._lock:
            for i in batch:
                event = self._inflight.pop(i, None)
                if event is not None:
                    event.set()

    # ------------------------------------------------------------------ disk layout
    def _shared_arrays(self, emb: Embedding) -> dict[str, np.ndarray]:
        return {f"pos_{k}": p[0].detach().cpu().float().numpy() for k, p in enumerate(emb.vision_pos_enc)}

    def _create(self, disk: SliceCache, emb: Embedding) -> None:
        levels = {name: (a.shape, self.dtype) for name, a in to_arrays(self.model, emb, self.dtype).items()}
        attrs = {"slices": self._n, "frame_shape": list(self._original_size), "family": self.model.family,
                 "model_name": self.model.name,
                 "input_size": list(emb.input_size) if emb.input_size else None}
        disk.create(levels, self._shared_arrays(emb), attrs)

    def _from_arrays(self, arrays: dict[str, np.ndarray], disk: SliceCache) -> Embedding | None:
        """An Embedding of arrays read from ``disk``; None when the shared encodings are damaged
        (the slice is then encoded, which repairs them)."""
        if self.model.family == "sam":
            return from_arrays(self.model, arrays, self._original_size, input_size=tuple(disk.attrs["input_size"]))
        with self._lock:
            if self._pos is None:
                shared = disk.shared()
                if shared is None:
                    return None
                self._pos = level_tensors(self.model, shared, "pos")
            pos = list(self._pos)
        return from_arrays(self.model, arrays, self._original_size, pos=pos)

    def clear(self) -> None:
        """Forget every slice: memory and this stack's cache folder."""
        with self._io_lock, self._lock:
            self._mem.clear()
            if self._disk is not None:
                self._disk.clear()
