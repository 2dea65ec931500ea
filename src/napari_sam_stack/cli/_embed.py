"""``embed``: precompute the embeddings of one or many stacks, here or on a Dask cluster."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import CacheError, SamStackError
from . import _common as c

EXAMPLES = """examples:
  napari-sam-stack embed stack.tif
  napari-sam-stack embed stack.ome.tif --channel 1 --cache-dir /data/cache
  napari-sam-stack embed 'plates/*.tif' --workers 4                      (a local Dask cluster, 4 processes)
  napari-sam-stack embed plates/ --scheduler tcp://10.0.0.5:8786 --cache-dir /shared/cache
  napari-sam-stack embed tzyx.tif --axis z --fixed t=0

Then open the same image in napari with the same model and --cache-dir (or the widget's cache
folder): the embeddings are read from the cache, no slice is encoded again."""


def add(sub) -> None:
    p = c.subcommand(sub, "embed", "precompute embeddings into the cache (here or on a Dask cluster)",
                     "Encode every slice of one or more stacks once, into the on-disk embeddings cache.", EXAMPLES)
    p.add_argument("images", nargs="+", help="TIFF / OME-TIFF files, (OME-)zarr folders, folders of them, or glob patterns")
    p.add_argument("--cache-dir", type=c.cache_dir, default=None, help="embeddings cache folder (default: the user cache)")
    p.add_argument("--batch-size", type=c.positive, default=1, help="slices per encoder call (default 1)")
    dask_args(p)
    c.image_args(p)
    c.model_args(p)
    p.set_defaults(func=run)


def dask_args(p) -> None:
    g = p.add_argument_group("Dask cluster (optional)")
    x = g.add_mutually_exclusive_group()
    x.add_argument("--scheduler", metavar="ADDRESS", help="a running Dask scheduler, e.g. tcp://host:8786 (dask-jobqueue, dask-scheduler)")
    x.add_argument("--workers", type=c.positive, metavar="N", help="start a local Dask cluster of N worker processes")
    g.add_argument("--threads", type=c.positive, metavar="T",
                   help="torch threads per Dask task (default: the worker's setting; the same T as a run without Dask "
                        "gives a bit-identical cache)")


def open_client(args):
    """A dask.distributed Client for --scheduler / --workers, or None."""
    if not (getattr(args, "scheduler", None) or getattr(args, "workers", None)):
        return None
    try:
        from distributed import Client
    except ImportError:
        raise SamStackError("--scheduler/--workers need dask.distributed: pip install distributed") from None
    if args.scheduler:
        try:
            return Client(args.scheduler, timeout="30s")
        except (OSError, TimeoutError) as e:
            raise SamStackError(f"--scheduler {args.scheduler}: cannot reach the Dask scheduler ({e})") from None
    from ..distributed import local_cluster

    return Client(local_cluster(args.workers))


def close_client(client) -> None:
    if client is None:
        return
    cluster = getattr(client, "cluster", None)
    client.close()
    if cluster is not None:
        cluster.close()


def cache_bytes(model, dtype: str = "float32") -> tuple[int, int]:
    """``(per slice, once per stack)`` bytes of the cache for ``model``: the encoder output levels,
    and (SAM 2) the positional encodings stored once, always float32."""
    m, size = model.module, model.image_size
    if model.family == "sam2":
        dec = m.sam_mask_decoder
        chans = [dec.conv_s0.out_channels, dec.conv_s1.out_channels] if m.use_high_res_features_in_sam else []
        sides = [size // 4 // 2**k for k in range(len(chans))] + [size // 16]
        per = sum(ch * s * s for ch, s in zip([*chans, m.hidden_dim], sides))
        return per * (2 if dtype == "float16" else 4), m.hidden_dim * sum(s * s for s in sides) * 4
    side = m.prompt_encoder.image_embedding_size[0]
    return m.prompt_encoder.embed_dim * side * side * (2 if dtype == "float16" else 4), 0


def record_source(store, path: Path) -> None:
    """Note the source file of a cache entry (``source.json`` inside it), for ``cache info``."""
    if store.path is None or not (store.path / "zarr.json").exists():
        return
    target = store.path / "source.json"
    tmp = store.path / ".source.json.tmp"
    try:
        tmp.write_text(json.dumps({"source": str(Path(path).resolve())}))
        tmp.replace(target)
    except OSError:
        pass


def run(args) -> int:
    from ..session import Session

    inputs = c.expand_inputs(args.images)
    views = []
    for path in inputs:  # read every header first: a wrong axis fails before the model loads
        try:
            views.append((path, *c.open_view(path, args)))
        except SamStackError as e:
            if len(inputs) == 1:
                raise
            views.append((path, e, None, None))
    model = c.load(args)
    client = open_client(args)
    failed = 0
    try:
        for path, img, opts, frames in views:
            if isinstance(img, Exception):
                print(f"error: {c.about(path, img)}", flush=True)
                failed += 1
                continue
            try:
                embed_one(Session(img.data, model, cache_dir=args.cache_dir, **opts), path, args, client)
            except (SamStackError, ValueError, OSError) as e:
                if len(inputs) == 1:
                    raise
                print(f"error: {c.about(path, e)}", flush=True)
                failed += 1
    finally:
        close_client(client)
    if len(inputs) > 1:
        print(f"{c.plural(len(inputs) - failed, 'stack')} embedded, {failed} failed")
    return 1 if failed else 0


def embed_one(s, path: Path, args, client) -> None:
    store = s.embeddings
    if store.path is None:
        raise CacheError("the embeddings cache cannot be used (see the warning above): nothing would be kept")
    n = len(s)
    todo = n - len(store.computed())
    if todo == 0:
        print(f"{path.name}: all {c.plural(n, 'slice')} already in the cache {store.path}")
        return
    per, once = cache_bytes(s.model, store.dtype)
    need = per * todo + (0 if (store.path / "zarr.json").exists() else once)
    print(f"{path.name}: {c.plural(todo, 'slice')} to embed, about {need / 2**20:,.1f} MB of disk "
          f"({per / 2**20:.1f} MB per slice) in {store.path.parent}", flush=True)
    with c.Progress(path.name) as bar:
        if client is None:
            s.compute_embeddings(progress=bar, batch_size=args.batch_size)
        else:
            s.compute_embeddings(progress=bar, batch_size=args.batch_size, client=client, threads=args.threads)
    on_disk = not store.in_memory and store.path is not None and len(store.computed()) == n \
        and all((store.path / "done" / str(i)).exists() for i in range(n))
    if not on_disk:
        raise CacheError(f"{path.name}: the embeddings could not be written to the cache at {args.cache_dir or 'the user cache'}; "
                         "nothing was kept (choose a writable --cache-dir)")
    record_source(store, path)
    print(f"{path.name}: {c.plural(todo, 'slice')} embedded into {store.path}")
