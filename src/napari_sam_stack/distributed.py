"""Embeddings (and ``auto`` over many stacks) on a Dask cluster, into the same zarr cache.

:func:`compute_embeddings` (``Session.compute_embeddings(client=...)``, CLI ``embed
--scheduler ADDRESS`` / ``--workers N``) sends the slices that are not cached yet to the
workers of a ``dask.distributed.Client``. Each task carries only data: the raw pixels of
its slices, the view settings (contrast limits, channels) and the keywords of
:func:`~napari_sam_stack.load_model` (a registry name, or a checkpoint path + config) —
never a model or anything else that would be unpickled as code. Each worker process
loads the model once (:func:`worker_model`, cached per process and checked against the
client's model identity) and writes with the same :class:`~napari_sam_stack.embeddings.EmbeddingStore`
code into the same cache folder (same signature, same key), so the cache is the one a
single process writes: chunks first, then the slice's done marker. A worker killed
mid-slice leaves a slice without a marker; Dask reruns the task on another worker, and a
later run (resumable) only sends the slices still missing. The first task runs alone when
the cache folder does not exist yet, so that exactly one worker creates it.

Bit-identical to the single-process cache when the encoder runs with the same number of
torch threads (``threads=``; CPU float sums depend on how they are split across threads:
measured differences of ~1e-6 between 1 and 2 threads otherwise). Submission is windowed, so
the client holds the pixels of a few tasks at a time, not of the whole stack.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from .errors import CacheError, SamStackError
from .normalise import Frames

__all__ = ["compute_embeddings", "local_cluster", "model_recipe", "worker_model", "map_stacks"]

TRIM = "MALLOC_TRIM_THRESHOLD_"

_MODELS: dict[str, Any] = {}
_MODELS_LOCK = threading.Lock()


def model_recipe(model) -> dict:
    """The :func:`~napari_sam_stack.load_model` keywords that rebuild ``model`` on a worker."""
    from .models import available_models

    extra = getattr(model, "extra", {}) or {}
    if extra.get("checkpoint"):
        config = extra.get("config")
        return {"checkpoint": str(extra["checkpoint"]), "config": None if config is None else str(config),
                "model_type": extra.get("model_type"), "overrides": extra.get("overrides")}
    if model.name in available_models() and str(model.identity).startswith(f"{model.name}:"):
        return {"model": model.name}
    raise SamStackError(
        f"{model!r} was not loaded from a registry name or a checkpoint file, so workers cannot load it: "
        "pass model=dict(checkpoint='x.pt', config=...) (load_model's keywords)"
    )


def local_cluster(n_workers: int, threads_per_worker: int = 1, **kw):
    """A ``distributed.LocalCluster`` of worker processes for torch inference.

    Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536`` (to give memory back
    to the OS sooner); glibc then stops adapting its mmap threshold and every large torch
    buffer is mapped and unmapped again: the encoder ran 2.3x slower in such a worker than
    in a plain process (docs/benchmarks.md). These workers start without it.
    """
    import dask
    from distributed import LocalCluster

    os.environ.pop(TRIM, None)  # (an earlier nanny of this process may have set it here)
    with dask.config.set({f"distributed.nanny.pre-spawn-environ.{TRIM}": None}):
        return LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker, processes=True,
                            dashboard_address=kw.pop("dashboard_address", ":0"), **kw)


def worker_model(recipe: dict, identity: str | None = None):
    """The model of ``recipe`` in this process, loaded once (per worker) and reused."""
    from .models import load_model

    key = json.dumps(recipe, sort_keys=True)
    with _MODELS_LOCK:
        m = _MODELS.get(key)
        if m is None:
            if os.environ.get(TRIM):
                import warnings

                warnings.warn(f"this worker runs with {TRIM}={os.environ[TRIM]} (Dask's default): torch runs up to "
                              "2x slower; start workers without it (see docs/cluster.md)", RuntimeWarning, stacklevel=2)
            m = _MODELS[key] = load_model(**recipe, progress=False)
    if identity is not None and m.identity != identity:
        raise SamStackError(f"the worker's model {m.identity} is not the client's {identity} (another file at that path?)")
    return m


class ShippedFrames(Frames):
    """A :class:`Frames` that holds only the raw pixels of some slices (sent to a worker) and the
    view settings needed to turn them into the encoder's frames exactly as the client would."""

    def __init__(self, frames: Frames, raws: dict[int, np.ndarray], signature: dict):  # noqa: D107 (no super().__init__)
        self.__dict__.update({k: v for k, v in frames.__dict__.items() if k != "image"})
        self.image = None
        self._n, self._shape, self._raws, self._sig = len(frames), tuple(frames.frame_shape), raws, signature

    def __len__(self) -> int:
        return self._n

    @property
    def frame_shape(self) -> tuple[int, int]:
        return self._shape

    def raw(self, index: int) -> np.ndarray:
        return self._raws[int(index)]

    def signature(self) -> dict:
        return self._sig


def _embed_task(recipe, identity, frames: ShippedFrames, root: str, sam2_resize: str, dtype: str, key: str,
                threads: int | None, batch_size: int = 1) -> list[int]:
    """Run on a worker: encode ``frames``' slices into the cache at ``root`` (chunks, then done markers)."""
    from .embeddings import EmbeddingStore

    if threads:
        import torch

        torch.set_num_threads(int(threads))
    model = worker_model(recipe, identity)
    store = EmbeddingStore(frames, model, sam2_resize=sam2_resize, cache_dir=root, dtype=dtype)
    if store.path is None or store.path.name != key:
        raise SamStackError(f"worker's cache key {store.path and store.path.name} differs from the client's {key}")
    indices = sorted(frames._raws)
    store.compute(indices=indices, batch_size=batch_size)
    missing = [i for i in indices if not (store.path / "done" / str(i)).is_file()]
    if missing or store.in_memory:
        raise CacheError(f"this worker could not write the embeddings cache at {store.path} (slices {missing})")
    return indices


def compute_embeddings(session, client, *, model: dict | None = None, progress: Callable[[int, int], Any] | None = None,
                       cancel: Callable[[], bool] | None = None, batch_size: int = 1, slices_per_task: int = 4,
                       window: int | None = None, threads: int | None = None, retries: int = 2) -> bool:
    """Encode ``session``'s missing slices on ``client``'s workers into its on-disk cache.

    ``model``: load_model keywords for the workers (default: derived from the session's
    model: its registry name or checkpoint file). ``slices_per_task`` slices per Dask task
    (a task costs some 10-50 ms of scheduling: measured in docs/benchmarks.md), ``batch_size``
    slices per encoder call within it; ``window`` tasks in flight (default twice the
    workers' threads); ``threads``: torch threads per task (default: the worker's setting). Returns True when every slice is
    cached, False when ``cancel()`` returned True (finished slices are kept).
    """
    from distributed import as_completed

    store = session.embeddings
    if store.in_memory or store.path is None:
        raise CacheError("a cluster writes into the on-disk embeddings cache: this session keeps embeddings in memory "
                         "(in_memory=True); give it a cache_dir that every worker can reach")
    recipe = dict(model) if model is not None else model_recipe(session.model)
    if recipe.get("device") is None:
        recipe.pop("device", None)
    pending = [i for i in range(len(store)) if not store.is_computed(i)]
    total, size = len(pending), max(1, int(slices_per_task))
    if progress is not None:
        progress(0, total)
    if not pending:
        return True
    batches = [pending[k:k + size] for k in range(0, total, size)]
    if window is None:
        window = 2 * max(1, sum(client.nthreads().values()))
    frames, sig, key = session.frames, store.signature, store.path.name
    root = str(store.path.parent.resolve())

    def submit(batch):
        raws = {i: np.ascontiguousarray(frames.raw(i)) for i in batch}
        shipped = ShippedFrames(frames, raws, sig["frames"])
        return client.submit(_embed_task, recipe, session.model.identity, shipped, root, store.sam2_resize,
                             store.dtype, key, threads, max(1, int(batch_size)), pure=False, retries=retries,
                             key=f"napari-sam-stack-embed-{key}-{batch[0]}-{len(batch)}")

    todo = iter(batches)
    done = 0
    if not (store.path / "zarr.json").exists():  # one task creates the cache folder; the others then only write slices
        done += len(submit(next(todo)).result())
        if progress is not None:
            progress(done, total)
    running = as_completed([submit(b) for b in _take(todo, max(1, int(window)))])
    try:
        for future in running:
            done += len(future.result())
            if progress is not None:
                progress(done, total)
            if cancel is not None and cancel():
                return False
            for b in _take(todo, 1):
                running.add(submit(b))
    finally:
        for f in list(running.futures):
            f.cancel()
    return True


def _take(it, n: int) -> list:
    out = []
    for x in it:
        out.append(x)
        if len(out) >= n:
            break
    return out


def map_stacks(client, func, items: list, *, retries: int = 1, progress: Callable[[int, int], Any] | None = None):
    """Run ``func(item)`` for every item on the cluster (one stack per task); yields
    ``(item, result, error)`` as tasks finish (error None on success): one failure does not
    stop the others."""
    from distributed import as_completed

    futures = {client.submit(func, it, pure=False, retries=retries): it for it in items}
    for k, future in enumerate(as_completed(list(futures)), 1):
        item = futures[future]
        try:
            yield item, future.result(), None
        except Exception as e:  # reported per stack, the rest go on
            yield item, None, e
        if progress is not None:
            progress(k, len(futures))
