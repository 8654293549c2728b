"""Training throughput (images/s) of `sglib train`, measured side by side in one run.

Each configuration trains the same network on the bundled training split (`make data` builds it)
for a few steps through sglib.training.train itself (data loading, augmentation, forward, backward,
optimizer), and reports the median images/s of the steps after the warm-up ones, read from the
run's log. Configurations: CPU (float32); on a GPU, float32 and mixed precision (bfloat16 where
supported, else float16 with a gradient scaler). Ratios are printed against the CPU row.

usage: python benchmarks/train.py [--data-root data] [--steps 12] [--batch-size 16] [--image-size 224]
                                  [--threads 2] [--backbone efficientnet_lite0]
"""
import argparse
import statistics
import tempfile

import torch

from sglib.runtime import configure_threads
from sglib.training import TrainConfig, bundled_training_set, read_log, train

WARMUP_STEPS = 3     # first steps pay for worker start-up and allocator growth


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
    args = p.parse_args()
    configure_threads(args.threads)
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


if __name__ == "__main__":
    main()
