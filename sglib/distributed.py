"""Descriptor extraction split over processes and machines with ``torchrun``.

Every process (rank) computes the shards ``k`` with ``k % world_size == rank`` into the same
output folder (:mod:`sglib.extract` layout); rank 0 creates the job before and checks and
finalises it after the others are done. Backend: NCCL when the processes use GPUs, gloo on CPU.
A killed run resumes from the finished shards, with any number of processes.

One machine, two processes (CPU or two GPUs)::

    torchrun --nproc_per_node=2 -m sglib.distributed --images list.txt --out feats/ \\
        --model cvnet --weights CVPR2022_CVNet_R50.pyth

Two machines sharing a file system (``--out`` and the images on it; run on each, node_rank 0 and 1)::

    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=4 --master_addr=HOST0 --master_port=29500 \\
        -m sglib.distributed --images list.txt --out /shared/feats --model cvnet --weights R50.pyth

Without a shared file system, run the same command on each machine into a local folder, copy
all ``shard_*`` files into one folder holding the same ``manifest.json`` (it is identical
everywhere) and call :func:`sglib.extract.finalize_job` on it.

``--cache-root DIR`` instead of ``--out`` writes to the folder that
:func:`sglib.extract.cached_features` (same images, same settings) then reads without recomputing.

The image list is a :func:`sglib.extract.write_image_list` file (``PATH`` or ``PATH<TAB>x1 y1 x2 y2``
per line). Read the result with :func:`sglib.extract.load_features`.
"""
from __future__ import annotations

import argparse
import datetime
import os
from typing import Callable, Sequence

import torch
import torch.distributed as dist

from .describe import SCALES, DescriptorSettings
from .extract import (DEFAULT_SHARD_SIZE, Extractor, cache_key, finalize_job, model_extractor, prepare_job,
                      read_image_list, run_shards)


def _barrier(device: torch.device) -> None:
    if device.type == "cuda":
        dist.barrier(device_ids=[device.index])
    else:
        dist.barrier()


def extract_distributed(out_dir, images: Sequence, make_extractor: Callable[[torch.device], Extractor],
                        bboxes: Sequence | None = None, *, cache_root=None, device: str = "auto",
                        shard_size: int = DEFAULT_SHARD_SIZE, overwrite: bool = False, retry_failed: bool = False,
                        progress: bool = True, timeout_hours: float = 72.0) -> dict | None:
    """Run one rank of a ``torchrun`` extraction (reads RANK, WORLD_SIZE, LOCAL_RANK from the environment).

    Without those variables it runs as a single process. ``make_extractor(device)`` builds the
    describer on this rank's device (``cuda:LOCAL_RANK`` or ``cpu``). With ``cache_root`` (and
    ``out_dir=None``) the job goes to the folder :func:`sglib.extract.cached_features` reads,
    ``cache_root/<cache_key>``. ``timeout_hours`` bounds how long a rank waits for the slowest one.
    Returns the completed manifest (with ``"out_dir"`` added) on rank 0, None on the others.
    """
    if (out_dir is None) == (cache_root is None):
        raise ValueError("pass exactly one of out_dir and cache_root")
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

    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(hours=timeout_hours))
    try:
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
    finally:
        dist.destroy_process_group()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="torchrun --nproc_per_node=N -m sglib.distributed",
                                description="Extract SuperGlobal descriptors of an image list, split over processes.")
    p.add_argument("--images", required=True, help="image list file: PATH or PATH<TAB>x1 y1 x2 y2 per line")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", help="output folder (shared by all ranks)")
    where.add_argument("--cache-root", help="feature cache folder: write to the subfolder cached_features() reads")
    p.add_argument("--model", default="cvnet", help="'cvnet' or an ImageNet backbone of sglib.models.imagenet")
    p.add_argument("--weights", help="checkpoint file (required for cvnet and resnet50/101)")
    p.add_argument("--depth", type=int, default=50, choices=(50, 101), help="CVNet ResNet depth")
    p.add_argument("--scales", type=float, nargs="+", default=list(SCALES[3]))
    p.add_argument("--gem-p", default="4.6", help="GeM exponent, or 'learned' for the checkpoint's p")
    p.add_argument("--no-regional", action="store_true", help="switch Regional-GeM off")
    p.add_argument("--scale-agg", default="max", help="'max' (Scale-GeM), 'mean', or a number")
    p.add_argument("--max-side", type=int, help="downscale images with a longer side (default: full resolution)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--num-workers", type=int, default=2, help="image-decoding threads per rank")
    p.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--overwrite", action="store_true", help="delete the job files already in --out")
    p.add_argument("--retry-failed", action="store_true", help="recompute shards that had failed images")
    p.add_argument("--timeout-hours", type=float, default=72.0)
    p.add_argument("--no-progress", action="store_true")
    return p


def _settings(args) -> DescriptorSettings:
    gem_p = None if args.gem_p == "learned" else float(args.gem_p)
    scale_agg = args.scale_agg if args.scale_agg in ("max", "mean") else float(args.scale_agg)
    return DescriptorSettings(scales=tuple(args.scales), gem_p=gem_p, regional=not args.no_regional,
                              scale_agg=scale_agg)


def load_model_extractor(model: str, weights=None, depth: int = 50, settings: DescriptorSettings = DescriptorSettings(),
                         *, max_side: int | None = None, batch_size: int = 1, num_workers: int = 0,
                         device="cpu") -> Extractor:
    """:func:`sglib.extract.model_extractor` for a backbone named as on the command line.

    ``model="cvnet"`` loads a CVNet checkpoint (``weights``, ``depth``); any other name goes to
    :func:`sglib.models.imagenet.load_backbone`.
    """
    if model == "cvnet":
        from .models import load_cvnet
        if weights is None:
            raise ValueError("model 'cvnet' needs a checkpoint file: pass weights (--weights)")
        net = load_cvnet(weights, depth=depth, device=device)
    else:
        from .models.imagenet import load_backbone
        net = load_backbone(model, weights, device=device)
    return model_extractor(net, settings, max_side=max_side, batch_size=batch_size, num_workers=num_workers)


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    paths, boxes = read_image_list(args.images)
    settings = _settings(args)

    def make_extractor(dev: torch.device) -> Extractor:
        return load_model_extractor(args.model, args.weights, args.depth, settings, max_side=args.max_side,
                                    batch_size=args.batch_size, num_workers=args.num_workers, device=dev)

    manifest = extract_distributed(args.out, paths, make_extractor, boxes, cache_root=args.cache_root,
                                   device=args.device,
                                   shard_size=args.shard_size, overwrite=args.overwrite,
                                   retry_failed=args.retry_failed, progress=not args.no_progress,
                                   timeout_hours=args.timeout_hours)
    if manifest is not None:
        print(f"{manifest['out_dir']}: {manifest['n_images']} images, dim {manifest['dim']}, "
              f"{manifest['n_failed']} failed (see failed.json)")


if __name__ == "__main__":
    main()
