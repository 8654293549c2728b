"""Training throughput (images/s) of `sglib train`, measured side by side in one run.

Each configuration trains the same network on the bundled training split (`make data` builds it)
for a few steps through sglib.training.train itself (data loading, augmentation, forward, backward,
optimizer), and reports the median images/s of the steps after the warm-up ones, read from the
run's log. Configurations: CPU (float32); on a GPU, float32 and mixed precision (bfloat16 where
supported, else float16 with a gradient scaler). Ratios are printed against the CPU row.

With ``--json FILE`` (``make bench``) the CPU configuration is also timed against its bound, a plain loop of
``zero_grad``, forward (the same network, frozen layers, GeM, projection and loss as the run: the training
descriptor of :mod:`sglib.training`), ``backward`` and ``optimizer.step()`` (AdamW on the same parameters) on one
fixed batch of the same size, already decoded, cropped and normalised, in the same channels-last layout: no data
loading, augmentation, gradient clipping, logging or checkpoints. ``--repeats`` runs of each, interleaved
(sglib, plain, sglib, ...); a step's time is the median over the runs' steps after the warm-up ones. Target:
sglib's step <= 1.25x the plain one. Reason: the rest of a step is decoding and augmenting 16 images in the
loader workers (a few ms each, but on a 2-core machine the workers share the cores with the step's threads),
a gradient-norm clip and a CSV line; a quarter of a step is the budget for those, not a measurement.

usage: python benchmarks/train.py [--data-root data] [--steps 12] [--batch-size 16] [--image-size 224]
                                  [--threads 2] [--backbone efficientnet_lite0] [--json FILE] [--repeats 2]
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from sglib.runtime import configure_threads
from sglib.training import TrainConfig, bundled_training_set, read_log, train

WARMUP_STEPS = 3     # first steps pay for worker start-up and allocator growth
TARGET_RATIO = 1.25


def plain_step_seconds(data, config: TrainConfig) -> list:
    """Seconds of each step of a plain forward + backward + optimizer.step() loop (see the usage) on CPU, float32,
    after :data:`WARMUP_STEPS` untimed ones."""
    import numpy as np
    from sglib.data.preprocess import normalize_pixels as normalize
    from sglib.method.losses import make_loss
    from sglib.training.data import Augmentation, read_uint8
    from sglib.training.loop import _base_network, _freeze_early_layers, training_descriptor

    model = _base_network(config)                 # the same network and head as the run builds
    loss = make_loss(config.loss, config.dim, data.n_classes, config.margin, config.scale)
    _freeze_early_layers(model, config.trainable_fraction)
    model.to(memory_format=torch.channels_last).eval()
    augment = Augmentation(size=config.image_size)
    idx = np.random.default_rng(0).choice(len(data), config.batch_size, replace=False)
    x = normalize(torch.stack([augment(read_uint8(data.paths[i]), int(i)) for i in idx]), model.normalization)
    x = x.contiguous(memory_format=torch.channels_last)
    labels = torch.as_tensor(data.labels[idx], dtype=torch.int64)
    params = [p for p in [*model.parameters(), *loss.parameters()] if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr)
    seconds = []
    for step in range(config.steps):
        t = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss(training_descriptor(model, x), labels).backward()
        optimizer.step()
        if step >= WARMUP_STEPS:
            seconds.append(time.perf_counter() - t)
    return seconds


def bound_row(data, config: TrainConfig, workers: int, threads: int, repeats: int) -> dict:
    """sglib's training step against the plain loop's, ``repeats`` runs of each, interleaved (see the usage)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _rows import bench_row
    ours, plain = [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as out:
            train(data, config, out, device="cpu", num_workers=workers, progress=False)
            log = read_log(out)
        ours += (config.batch_size / log[log.step > WARMUP_STEPS].images_per_s).tolist()
        plain += plain_step_seconds(data, config)
    t, b = statistics.median(ours), statistics.median(plain)
    stage = (f"training step {config.backbone} batch {config.batch_size} {config.image_size} px float32 "
             f"({workers} loader workers)")
    row = bench_row(stage, threads, "cpu", t, "plain zero_grad + forward + backward + AdamW step on one fixed, "
                    "decoded batch (same network, frozen layers and loss)", b, f"<= {TARGET_RATIO}",
                    t / b <= TARGET_RATIO)
    print(f"training step: sglib {t:.3f} s, plain loop {b:.3f} s = {row['ratio']:.2f}x (medians over {repeats} "
          f"interleaved runs' steps {WARMUP_STEPS + 1}-{config.steps}); TARGET <= {TARGET_RATIO}: {row['status']}")
    return row


def throughput(data, config: TrainConfig, device: str, workers: int) -> float:
    with tempfile.TemporaryDirectory() as out:
        train(data, config, out, device=device, num_workers=workers, progress=False)
        log = read_log(out)
    steady = log[log.step > WARMUP_STEPS].images_per_s
    return statistics.median(steady.tolist())


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", default="data")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--json", default=None, help="also time the CPU step against a plain loop and append the row "
                                                "to this JSON list file")
    p.add_argument("--repeats", type=int, default=2, help="--json: interleaved runs of sglib and of the plain loop")
    args = p.parse_args()
    threads = configure_threads(args.threads)
    data = bundled_training_set(args.data_root)
    base = dict(backbone=args.backbone, steps=args.steps, batch_size=args.batch_size, image_size=args.image_size,
                warmup_steps=1, val_every=10_000, checkpoint_every=10_000, projection_init="random")
    rows = [("cpu float32", "cpu", TrainConfig(**base, amp=False))]
    if torch.cuda.is_available():
        amp = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        rows += [("cuda float32", "cuda", TrainConfig(**base, amp=False)),
                 (f"cuda mixed ({amp})", "cuda", TrainConfig(**base, amp=True))]
    else:
        print("no CUDA device: GPU rows skipped")
    print(f"{args.backbone}, batch {args.batch_size}, {args.image_size} px crops, {args.threads} CPU threads, "
          f"{args.workers} loader workers, median of steps {WARMUP_STEPS + 1}-{args.steps}")
    results = {name: throughput(data, config, device, args.workers) for name, device, config in rows}
    ref = results["cpu float32"]
    for name, ips in results.items():
        print(f"  {name:<22} {ips:8.1f} images/s   {ips / ref:6.2f}x cpu")
    if args.json:
        from _rows import append_rows
        append_rows(args.json, [bound_row(data, rows[0][2], args.workers, threads, args.repeats)])


if __name__ == "__main__":
    main()
