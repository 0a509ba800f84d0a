"""Synthesis shards as tasks on a Dask cluster: the `--dask` way of seggen.synthesis.synthesize.synthesize.

A cluster is started with Dask's own CLIs, on every node (the output directory on a filesystem all
of them share):

    dask scheduler --host 10.0.0.5 --port 8786
    dask worker tcp://10.0.0.5:8786 --nworkers 8 --nthreads 1 --resources GPU=1   # a node of 8 GPUs

and `synthesize.dask.address: tcp://10.0.0.5:8786` names it (null: a local cluster of
`synthesize.dask.n_workers` processes for the run). This process plans (bad input fails here, before
any task starts), hashes the generators once and trains the filter once, submits one task per shard
and merges when all are done: exactly once, here. A task claims a GPU of its node that no other
worker process holds (seggen.synthesis.devices) and asks for `GPU=1` where the workers declare
that resource, so each GPU runs one shard at a time. A worker that dies takes its task with it;
the scheduler runs it again on another worker, which resumes the shard from the samples already
written (records are written last, files atomically), so the dataset is the one a single process
makes.
"""

from __future__ import annotations

import logging
import time

from seggen.config import Params


def run_task(params: Params, strategy: str, shard: int, num_shards: int, digests: dict[str, str]) -> dict:
    """A shard on a Dask worker: its GPU claimed first (before torch initialises CUDA here)."""
    from seggen.synthesis import devices
    from seggen.synthesis.synthesize import run_shard

    device = "cpu" if params.synthesize.devices == "cpu" else None
    if device is None:
        devices.claim_gpu()
    # merge=False: the submitting process merges once, after every shard has finished
    return run_shard(params, strategy, shard, num_shards, progress=False, merge=False, digests=digests, device=device)


def synthesize_on_dask(params: Params, strategy: str, num_shards: int | None = None, progress: bool = True) -> dict:
    """Every shard of `strategy` as a task on the cluster of `synthesize.dask` (one shard per
    worker by default), then the merge."""
    from distributed import Client, LocalCluster

    from seggen.progress import tqdm
    from seggen.synthesis.filters import prepare_filter
    from seggen.synthesis.synthesize import make_plan, merge_once, prepare_output, run_shard

    plan = make_plan(params, strategy)
    if prepare_output(plan):
        return run_shard(params, strategy, plan=plan, progress=progress)
    prepare_filter(params, progress)  # the probe trained once, here, not per shard
    logging.getLogger("distributed").setLevel(logging.WARNING)  # the cluster's own chatter, not the run's
    d = params.synthesize.dask
    cluster = None
    if d.address:
        client = Client(d.address, timeout=60)
    else:
        cluster = LocalCluster(
            n_workers=d.n_workers,
            threads_per_worker=d.threads_per_worker,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        )
        client = Client(cluster)
        cfg = params.synthesize
        if not cfg.threads:  # torch's threads in each worker process: its Dask threads
            params = params.model_copy(update={"synthesize": cfg.model_copy(update={"threads": d.threads_per_worker})})
    try:
        workers = client.scheduler_info()["workers"]
        gpu = any("GPU" in w.get("resources", {}) for w in workers.values())
        n = num_shards or max(1, len(workers))
        futures = [
            client.submit(
                run_task,
                params,
                strategy,
                i,
                n,
                plan.generators,
                key=f"synthesize-{strategy}-{plan.fingerprint}-{i}-of-{n}",
                pure=False,
                resources={"GPU": 1} if gpu else None,
            )
            for i in range(n)
        ]
        desc = f"synthesize {strategy} [dask, {n} shards]"
        bar = tqdm(total=len(plan.jobs), initial=plan.written(), desc=desc, unit="img", disable=not progress)
        t0 = time.perf_counter()
        while not all(f.done() for f in futures):
            time.sleep(0.5)
            bar.update(plan.written() - bar.n)
        parts = client.gather(futures)  # a shard's error (or a task that killed every worker) raises here
        wall = time.perf_counter() - t0
        bar.close()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    summary = merge_once(plan)
    generated = sum(p["generated"] for p in parts)
    return {
        **summary,
        "generated": generated,
        "seconds": wall,
        "images_per_s": generated / wall if generated else None,
        "shards": parts,
    }
