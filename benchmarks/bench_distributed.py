"""Dask path vs in-process embeddings on the same slices and the same torch thread count.

    python benchmarks/bench_distributed.py [--slices 8] [--size 512] [--threads 1] [--model tiny|hiera_t] [--repeats 3]

In-process: ``Session.compute_embeddings()``. Dask: a LocalCluster of ONE worker process
with one Dask thread, tasks running with the same torch threads
(``compute_embeddings(client=..., threads=T)``), into another cache folder. The model is
loaded on the worker before the timed runs (that cost, and the cluster start, are printed
apart: they are paid once per worker, not per stack). Runs alternate (in-process, Dask,
...) and the median ratio Dask / in-process is printed for wall time and for CPU time (the
worker's plus the client's: on a shared machine wall time mostly measures the neighbours).
Checks that both caches are bit-identical. Random weights (no pretrained weights here):
the architecture, not the weights, sets the time.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def _checkpoint(folder: Path, which: str):
    import torch
    from sam2.build_sam import build_sam2

    from napari_sam_stack.testing import SAM2_BASE_CONFIG, tiny_sam2_checkpoint

    if which == "tiny":
        return tiny_sam2_checkpoint(folder)
    torch.manual_seed(0)
    model = build_sam2(SAM2_BASE_CONFIG, None, device="cpu")  # the real hiera_t architecture, 1024 input
    path = folder / "hiera_t_random.pt"
    torch.save({"model": model.state_dict()}, path)
    return path, SAM2_BASE_CONFIG


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slices", type=int, default=8)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", choices=["hiera_t", "tiny"], default="tiny")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--per-task", type=int, default=4, help="slices per Dask task")
    ap.add_argument("--dask-trim", action="store_true", help="keep Dask's MALLOC_TRIM_THRESHOLD_=65536 on the worker")
    args = ap.parse_args()

    import torch
    import zarr
    from distributed import Client, LocalCluster

    from napari_sam_stack import Session, load_model
    from napari_sam_stack.testing import synthetic_nuclei

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench-distributed-"))
    ckpt, config = _checkpoint(tmp, args.model)
    model = load_model(checkpoint=ckpt, config=config, device="cpu")
    image = synthetic_nuclei((args.slices, args.size, args.size), n_nuclei=6, seed=1)[0]
    print(f"{args.slices} slices of {args.size}x{args.size} uint16, SAM 2 {args.model} (input {model.image_size}), "
          f"torch threads {args.threads}, {args.per_task} slice(s) per Dask task, CPU"
          f"{', worker with MALLOC_TRIM_THRESHOLD_=65536' if args.dask_trim else ''}")

    t = time.perf_counter()
    if args.dask_trim:  # Dask's default worker environment, for comparison
        cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None)
    else:
        from napari_sam_stack.distributed import local_cluster

        cluster = local_cluster(1)
    client = Client(cluster)
    t_cluster = time.perf_counter() - t
    from napari_sam_stack.distributed import model_recipe, worker_model

    t = time.perf_counter()
    client.run(worker_model, model_recipe(model), model.identity)  # loaded once per worker
    t_load = time.perf_counter() - t
    print(f"once per worker: cluster start {t_cluster:.1f} s, model load {t_load:.1f} s")

    def worker_cpu() -> float:
        return sum(client.run(time.process_time).values())

    Session(image[:1], model, in_memory=True).compute_embeddings()  # first-call costs out of the timing
    Session(image[:1], model, cache_dir=tmp / "warm").compute_embeddings(client=client, threads=args.threads)
    rows = []
    for rep in range(args.repeats):  # interleaved: a shared machine's load hits both alike
        s = Session(image, model, cache_dir=tmp / f"inproc{rep}")
        c0, t = time.process_time(), time.perf_counter()
        s.compute_embeddings()
        wall_in, cpu_in = time.perf_counter() - t, time.process_time() - c0
        d = Session(image, model, cache_dir=tmp / f"dask{rep}")
        w0, c0, t = worker_cpu(), time.process_time(), time.perf_counter()
        d.compute_embeddings(client=client, threads=args.threads, slices_per_task=args.per_task)
        wall_d = time.perf_counter() - t
        cpu_d = (worker_cpu() - w0) + (time.process_time() - c0)
        rows.append((wall_in, wall_d, cpu_in, cpu_d))
        print(f"run {rep}: in-process {wall_in:7.2f} s wall {cpu_in:7.2f} s CPU | Dask {wall_d:7.2f} s wall "
              f"{cpu_d:7.2f} s CPU (worker + client) | ratio wall {wall_d / wall_in:.3f} CPU {cpu_d / cpu_in:.3f}")
    client.close()
    cluster.close()
    r = np.array(rows)
    print(f"median ratio Dask / in-process: wall {np.median(r[:, 1] / r[:, 0]):.3f}, CPU {np.median(r[:, 3] / r[:, 2]):.3f}"
          f"  (goal <= 1.1); per slice in-process {np.median(r[:, 0]) / args.slices:.3f} s")

    a, b = s.embeddings.path, d.embeddings.path
    ga, gb = zarr.open_group(a, mode="r"), zarr.open_group(b, mode="r")
    same = a.name == b.name and all(np.array_equal(ga[k][...], gb[k][...]) for k in ga.array_keys())
    print(f"caches bit-identical: {same}")


if __name__ == "__main__":
    main()
