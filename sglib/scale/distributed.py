"""Descriptor extraction split over processes and machines with ``torchrun``.

Every process (rank) computes the shards ``k`` with ``k % world_size == rank`` into the same
output folder (:mod:`sglib.scale.shards` layout); rank 0 creates the job before and checks and
finalises it after the others are done. Backend: NCCL when the processes use GPUs, gloo on CPU.
A killed run resumes from the finished shards, with any number of processes.

One machine, two processes (CPU or two GPUs)::

    torchrun --nproc_per_node=2 -m sglib extract --images list.txt --out feats/ \\
        --model cvnet --weights CVPR2022_CVNet_R50.pyth

Two machines sharing a file system (``--out`` and the images on it; run on each, node_rank 0 and 1)::

    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=4 --master_addr=HOST0 --master_port=29500 \\
        -m sglib extract --images list.txt --out /shared/feats --model cvnet --weights R50.pyth

Without a shared file system, run the same command on each machine into a local folder, copy
all ``shard_*`` files into one folder holding the same ``manifest.json`` (it is identical
everywhere) and call :func:`sglib.scale.shards.finalize_job` on it.

``--cache-root DIR`` instead of ``--out`` writes to the folder that
:func:`sglib.scale.extract.cached_features` reads for the same images, model and settings: the
extractor is :func:`sglib.scale.extract.build_extractor`'s, as in the CLI and the notebooks, so
``python -m sglib evaluate --cache DIR`` and the notebooks then extract nothing.

The image list is a :func:`sglib.scale.shards.write_image_list` file (``PATH`` or ``PATH<TAB>x1 y1 x2 y2``
per line). Read the result with :func:`sglib.scale.shards.load_features`.
"""
from __future__ import annotations

import os
from typing import Callable, Sequence

import torch
import torch.distributed as dist

from ..runtime import DEFAULT_DIST_TIMEOUT, check_dist_timeout, process_group
from .extract import Extractor, cache_key, run_shards
from .shards import DEFAULT_SHARD_SIZE, finalize_job, prepare_job


def _barrier(device: torch.device) -> None:
    if device.type == "cuda":
        dist.barrier(device_ids=[device.index])
    else:
        dist.barrier()


def extract_distributed(out_dir, images: Sequence, make_extractor: Callable[[torch.device], Extractor],
                        bboxes: Sequence | None = None, *, cache_root=None, device: str = "auto",
                        shard_size: int = DEFAULT_SHARD_SIZE, overwrite: bool = False, retry_failed: bool = False,
                        progress: bool = True, timeout_hours: float = 72.0,
                        dist_timeout: float = DEFAULT_DIST_TIMEOUT) -> dict | None:
    """Run one rank of a ``torchrun`` extraction (reads RANK, WORLD_SIZE, LOCAL_RANK from the environment).

    Without those variables it runs as a single process. ``make_extractor(device)`` builds the
    describer on this rank's device (``cuda:LOCAL_RANK`` or ``cpu``). With ``cache_root`` (and
    ``out_dir=None``) the job goes to the folder :func:`sglib.scale.extract.cached_features` reads,
    ``cache_root/<cache_key>``. ``timeout_hours`` bounds how long a rank that has finished its shards
    waits for the slowest one; ``dist_timeout`` (seconds) how long the ranks wait for one that runs no
    code (stopped, hung, on a lost machine) before all end. An exception on any rank ends them all at
    once, its reason printed by each (:func:`sglib.runtime.process_group`, shared with training).
    Returns the completed manifest (with ``"out_dir"`` added) on rank 0, None on the others.
    """
    if (out_dir is None) == (cache_root is None):
        raise ValueError("pass exactly one of out_dir and cache_root")
    check_dist_timeout(dist_timeout)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if use_cuda:
        if not torch.cuda.is_available():
            raise ValueError("device='cuda' but no CUDA device is visible")
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world == 1:
        extractor = make_extractor(dev)
        out_dir = out_dir or os.path.join(cache_root, cache_key(images, extractor, bboxes))
        prepare_job(out_dir, images, extractor, bboxes, shard_size=shard_size, overwrite=overwrite)
        run_shards(out_dir, images, extractor, bboxes, retry_failed=retry_failed, progress=progress)
        return {**finalize_job(out_dir), "out_dir": str(out_dir)}

    with process_group("nccl" if use_cuda else "gloo", timeout_hours * 3600, dist_timeout):
        extractor = make_extractor(dev)
        out_dir = out_dir or os.path.join(cache_root, cache_key(images, extractor, bboxes))
        # rank 0 alone creates (or wipes) the folder; the others learn the outcome, error included
        outcome = [None]
        if rank == 0:
            try:
                prepare_job(out_dir, images, extractor, bboxes, shard_size=shard_size, overwrite=overwrite)
            except ValueError as exc:
                outcome = [str(exc)]
        dist.broadcast_object_list(outcome, src=0, device=dev if use_cuda else None)
        if outcome[0] is not None:
            raise ValueError(outcome[0])
        run_shards(out_dir, images, extractor, bboxes, rank=rank, world_size=world, retry_failed=retry_failed,
                   progress=progress)
        _barrier(dev)
        return {**finalize_job(out_dir), "out_dir": str(out_dir)} if rank == 0 else None
