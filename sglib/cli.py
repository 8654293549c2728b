"""Command line: ``python -m sglib {evaluate,download,build-data,demo}``.

Example (the paper's setting, with CVNet's released ResNet-101):

    python -m sglib evaluate --data-root data --dataset roxford5k \\
        --checkpoint CVPR2022_CVNet_R101.pyth --depth 101
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from .describe import SCALES, DescriptorSettings


def _scales(text: str) -> tuple:
    if text in ("1", "3", "5"):
        return SCALES[int(text)]
    try:
        return tuple(float(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--scales: expected 1, 3, 5 or a comma list like 0.7071,1,1.4142, got {text!r}")


def _scale_agg(text: str):
    if text in ("max", "mean"):
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--scale-agg: expected max, mean or a number, got {text!r}")


def _relu_plus(text: str):
    return {"on": True, "off": False, "none": None}[text]


def _add_evaluate(sub):
    p = sub.add_parser("evaluate", help="extract (cached), retrieve, rerank and evaluate on a revisitop-format dataset")
    p.add_argument("--data-root", required=True, help="folder holding datasets/NAME/{gnd_NAME.pkl,jpg/}")
    p.add_argument("--dataset", required=True, help="roxford5k, rparis6k, or any revisitop-format dataset name")
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", help="CVNet checkpoint (CVPR2022_CVNet_R50.pyth / _R101.pyth)")
    model.add_argument("--backbone", help="ImageNet backbone: efficientnet_lite0, mobilenet_v2, resnet50, resnet101")
    p.add_argument("--weights", help="weights file for --backbone resnet50/101")
    p.add_argument("--whitening", help="whitening .npz (sglib.whitening) applied as the head of --backbone")
    p.add_argument("--depth", type=int, default=50, choices=(50, 101))
    p.add_argument("--scales", type=_scales, default=SCALES[3], help="1, 3, 5 or a comma list (default 3)")
    p.add_argument("--gem-p", type=float, default=4.6, help="fixed GeM p (4.6 = GeM+; 3 = plain GeM)")
    p.add_argument("--learned-p", action="store_true", help="use the checkpoint's learned GeM p instead of --gem-p")
    p.add_argument("--no-regional", action="store_true", help="switch Regional-GeM off")
    p.add_argument("--scale-agg", type=_scale_agg, default="max", help="max (Scale-GeM), mean, or a finite p")
    p.add_argument("--relu-plus", type=_relu_plus, default="on", choices=(True, False, None), metavar="{on,off,none}",
                   help="ReLU+ for CVNet checkpoints: on, off (the reference's off), none (no floor anywhere)")
    p.add_argument("--no-rerank", action="store_true", help="switch SuperGlobal reranking off")
    p.add_argument("--M", type=int, default=400)
    p.add_argument("--K", type=int, default=9)
    p.add_argument("--beta", type=float, default=0.15)
    p.add_argument("--per-protocol-shortlist", action="store_true",
                   help="drop each protocol's junk before the top-M (DELG/CVNet practice); default: one shared shortlist")
    p.add_argument("--max-side", type=int, default=None, help="downscale images larger than this (default: full size)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--cache", default=None, help="feature cache folder (default DATA_ROOT/cache)")
    p.add_argument("--json", default=None, help="write the results here (default results/NAME_evaluate.json)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def _build_model(args):
    from .models import load_cvnet
    from .models.imagenet import load_backbone
    if args.checkpoint:
        return load_cvnet(args.checkpoint, depth=args.depth, relu_plus=args.relu_plus, device=args.device)
    head = None
    if args.whitening:
        from .whitening import Whitening
        head = Whitening.load(args.whitening)
    return load_backbone(args.backbone, weights=args.weights, device=args.device, head=head)


def cmd_evaluate(args) -> dict:
    from .datasets import load_revisitop
    from .evaluate import results_table, summary
    from .pipeline import RerankSettings, dataset_features, evaluate_retrieval, multi_settings_extractor

    if args.threads:
        torch.set_num_threads(args.threads)
    dataset = load_revisitop(args.data_root, args.dataset, require_images=True)
    if args.learned_p and not args.checkpoint:
        raise SystemExit("--learned-p needs a CVNet --checkpoint (ImageNet backbones have no learned p)")
    settings = DescriptorSettings(scales=args.scales, gem_p=None if args.learned_p else args.gem_p,
                                  regional=not args.no_regional, scale_agg=args.scale_agg)
    model = _build_model(args)
    extractor = multi_settings_extractor(model, {"run": settings}, max_side=args.max_side)
    cache = args.cache or os.path.join(args.data_root, "cache")
    q, x = dataset_features(dataset, extractor, cache)
    rerank = None if args.no_rerank else RerankSettings(args.M, args.K, args.beta, args.per_protocol_shortlist)
    res = evaluate_retrieval(q, x, dataset.gnd, rerank)
    table = results_table(res)
    used = "off" if rerank is None else f"M={res['M']} K={args.K} beta={args.beta}"
    print(f"{args.dataset}: {len(dataset.qimlist)} queries, {len(dataset.imlist)} database images; "
          f"{settings}; rerank {used}")
    print(table.to_string())
    record = {"dataset": args.dataset, "model": args.checkpoint or args.backbone, "settings": settings.as_dict(),
              "rerank": None if rerank is None else {**rerank.__dict__, "M": res["M"]},
              "map": summary(res), "table": table.to_dict(orient="index")}
    out = Path(args.json or f"results/{args.dataset}_evaluate.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    print(f"wrote {out}")
    return record


def _add_download(sub):
    p = sub.add_parser("download", help="download roxford5k / rparis6k / revisitop1m (needs internet)")
    p.add_argument("dataset", choices=("roxford5k", "rparis6k", "revisitop1m"))
    p.add_argument("--data-root", required=True)


def cmd_download(args):
    from .download import download_revisitop, download_revisitop1m
    if args.dataset == "revisitop1m":
        download_revisitop1m(args.data_root)
    else:
        print(download_revisitop(args.dataset, args.data_root))


def _add_data_and_demo(sub):
    p = sub.add_parser("build-data", help="fetch the real photos and build the embedded benchmarks")
    p.add_argument("--data-root", default="data")
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("demo", help="the embedded default end to end: build, extract, rerank, evaluate, table")
    p.add_argument("--data-root", default="data")
    p.add_argument("--results", default="results")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--no-whitening", action="store_true", help="skip the whitening learned on the training split")
    p.add_argument("--threads", type=int, default=None)


def cmd_build_data(args):
    from .benchmarks import build_all
    for name, path in build_all(args.data_root, seed=args.seed).items():
        print(f"{name}: {path}")


def cmd_demo(args):
    from .demo import run_demo
    if args.threads:
        torch.set_num_threads(args.threads)
    run_demo(args.data_root, args.results, args.backbone, whiten=not args.no_whitening)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sglib", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_evaluate(sub)
    _add_download(sub)
    _add_data_and_demo(sub)
    args = parser.parse_args(argv)
    try:
        commands = {"evaluate": cmd_evaluate, "download": cmd_download, "build-data": cmd_build_data,
                    "demo": cmd_demo}
        commands[args.command](args)
    except ValueError as exc:   # bad input: one clear line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
