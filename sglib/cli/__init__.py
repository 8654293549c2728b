"""Command line: ``python -m sglib {evaluate,rerank,extract,train,train-study,download,build-data,demo,cpu-spread,stability,
report,design-check,rerankers}``.

Every flag's value is checked before any data or model is read: its text when the command line is
parsed, the settings' ranges by their dataclass as the command starts (:mod:`sglib.cli.flags`).
An expected failure (bad file, missing data, failed download) ends in one line on stderr and exit
code 2 (``--debug`` shows the traceback instead).

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

from ..runtime import configure_threads
from .flags import (add_descriptor_flags, add_dist_timeout_flag, add_model_flags, add_settings_flags, backbone,
                    descriptor_settings, device, load_model, parsed_settings, positive_int, writable)

# ------------------------------------------------------------------------------------- commands

def _add_evaluate(sub):
    from ..evaluate.retrieval import RerankSettings
    p = sub.add_parser("evaluate", help="extract (cached), retrieve, rerank and evaluate on a revisitop-format dataset")
    p.add_argument("--data-root", required=True, help="folder holding datasets/NAME/{gnd_NAME.pkl,jpg/}")
    p.add_argument("--dataset", required=True, help="roxford5k, rparis6k, or any revisitop-format dataset name")
    add_model_flags(p)
    add_descriptor_flags(p)
    p.add_argument("--no-rerank", action="store_true", help="switch SuperGlobal reranking off")
    add_settings_flags(p, RerankSettings)
    p.add_argument("--per-protocol-shortlist", action="store_true",
                   help="drop each protocol's junk before the top-M (DELG/CVNet practice); default: one shared shortlist")
    p.add_argument("--device", type=device, default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--cache", type=writable("--cache", folder=True), default=None,
                   help="feature cache folder (default DATA_ROOT/cache)")
    p.add_argument("--json", type=writable("--json", folder=False), default=None,
                   help="write the results here (default results/NAME_evaluate.json)")
    p.add_argument("--retry-failed", action="store_true", help="extract again the images that failed before")


def cmd_evaluate(args) -> dict:
    from ..data.revisitop import load_revisitop
    from ..evaluate.protocol import nan_to_none
    from ..evaluate.retrieval import evaluate_retrieval
    from ..scale.extract import build_extractor, dataset_features

    settings = descriptor_settings(args)
    rerank = None if args.no_rerank else args.settings["RerankSettings"]
    dataset = load_revisitop(args.data_root, args.dataset, require_images=True)
    model = load_model(args, args.device)
    extractor = build_extractor(model, settings, max_side=args.max_side, batch_size=args.batch_size,
                                num_workers=args.num_workers)
    cache = args.cache or Path(args.data_root) / "cache"
    q, x = dataset_features(dataset, extractor, cache, retry_failed=args.retry_failed)
    shortlist = "per_protocol" if args.per_protocol_shortlist else "shared"
    res = evaluate_retrieval(q, x, dataset.gnd, rerank, shortlist=shortlist)
    table = res.table()
    used = "off" if rerank is None else f"M={res.M} K={args.K} beta={args.beta} ({shortlist} shortlist)"
    print(f"{args.dataset}: {dataset.n_queries} queries, {dataset.n_db} database images; "
          f"{settings}; rerank {used}")
    print(table.to_string())
    record = {"dataset": args.dataset, "model": args.checkpoint or args.backbone, "settings": settings.as_dict(),
              "rerank": None if rerank is None else {"M": res.M, "K": args.K, "beta": args.beta, "shortlist": shortlist},
              "map": res.summary(), "table": table.to_dict(orient="index")}
    out = Path(args.json or f"results/{args.dataset}_evaluate.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    # a protocol without positives has no mAP: JSON null, never the non-standard NaN
    out.write_text(json.dumps(nan_to_none(record), indent=2, allow_nan=False))
    print(f"wrote {out}")
    return record


def _add_rerank(sub):
    from ..evaluate.retrieval import RerankSettings
    from ..rerankers import RERANKERS
    p = sub.add_parser("rerank", help="rerank your own vectors (.npy) with any reranker; first stage from a ranking, "
                                      "a faiss index, a Qdrant collection or exact search; scored with a ground truth")
    p.add_argument("--queries", required=True, help="(nq, D) float .npy, unit rows")
    p.add_argument("--database", required=True, help="(N, D) float .npy, unit rows")
    first = p.add_mutually_exclusive_group()
    first.add_argument("--ranking", help="(nq, L >= M) integer .npy: the first stage's database row numbers")
    first.add_argument("--index", help="faiss index file saved by sglib.search.save_index, over the same database")
    first.add_argument("--qdrant", metavar="FOLDER", help="embedded Qdrant collection (a folder, or :memory:); "
                                                          "filled with the database when empty")
    first.add_argument("--qdrant-url", help="a Qdrant server (http://host:6333), collection 'sglib'")
    p.add_argument("--method", default="superglobal", choices=sorted(RERANKERS), help="reranker (default superglobal)")
    add_settings_flags(p, RerankSettings)
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="a parameter of another --method (e.g. k1=20 for k_reciprocal); repeatable")
    p.add_argument("--ground-truth", help="revisitop gnd .pkl, or a CSV with the header query,database (relevant "
                                          "pairs, row numbers): the mAP before and after is printed and recorded")
    p.add_argument("--out", required=True, type=writable("--out", folder=False),
                   help="the reranked top-M: .npy (nq, M) ids, or .json (the record and the ranking)")


def _method_params(args) -> dict:
    """--K/--beta for the SuperGlobal methods, --param NAME=VALUE (numbers) for the others."""
    from ..rerankers import RERANKERS
    if args.method.startswith("superglobal"):
        if args.param:
            raise ValueError(f"--param is for the other methods; {args.method} takes --K and --beta")
        return {"K": args.K, "beta": args.beta}
    params = {}
    for item in args.param:
        name, _, text = item.partition("=")
        if name not in RERANKERS[args.method].defaults or not text:
            raise ValueError(f"--param {item!r}: {args.method} takes {', '.join(RERANKERS[args.method].defaults)} "
                             "as NAME=VALUE")
        try:
            params[name] = int(text) if isinstance(RERANKERS[args.method].defaults[name], int) else float(text)
        except ValueError:
            raise ValueError(f"--param {item!r}: {text!r} is not a number") from None
    return params


def cmd_rerank(args) -> dict:
    from ..scale.own_vectors import rerank_files
    settings = args.settings["RerankSettings"]
    record = rerank_files(args.queries, args.database, args.out, args.method, settings.M, _method_params(args),
                          ranking=args.ranking, index=args.index, qdrant=args.qdrant, qdrant_url=args.qdrant_url,
                          ground_truth=args.ground_truth)
    print(f"{record['method']} on the top {record['M']} of {record['queries']} queries over {record['database']} "
          f"vectors of {record['dim']} dims; first stage: {record['first_stage']} ({record['seconds']['first_stage']} s),"
          f" rerank {record['seconds']['rerank']} s")
    if "gain_check" in record:
        print(f"without labels: {record['gain_check']['message']}")
    for when, maps in record.get("map_top_m", {}).items():
        print(f"mAP over the top {record['M']}, {when:6s}: " + "  ".join(f"{p} {v:.2f}" for p, v in maps.items()))
    print(f"wrote {args.out}")
    return record


def _add_extract(sub):
    from ..scale.shards import DEFAULT_SHARD_SIZE
    p = sub.add_parser("extract", help="describe an image list into sharded, resumable features; under torchrun "
                                       "(torchrun --nproc_per_node=N -m sglib extract ...) split over processes")
    p.add_argument("--images", required=True, help="image list file: PATH or PATH<TAB>x1 y1 x2 y2 per line")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", help="output folder (shared by all processes)")
    where.add_argument("--cache-root", help="feature cache folder: write to the subfolder cached_features() reads")
    add_model_flags(p, required=True)
    add_descriptor_flags(p)
    p.add_argument("--shard-size", type=positive_int("--shard-size"), default=DEFAULT_SHARD_SIZE)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--overwrite", action="store_true", help="delete the job files already in --out")
    p.add_argument("--retry-failed", action="store_true", help="recompute shards that had failed images")
    p.add_argument("--timeout-hours", type=float, default=72.0, help="how long a process waits for the slowest one")
    add_dist_timeout_flag(p)
    p.add_argument("--no-progress", action="store_true")


def cmd_extract(args):
    from ..scale.distributed import extract_distributed
    from ..scale.extract import build_extractor
    from ..scale.shards import read_image_list
    paths, boxes = read_image_list(args.images)
    settings = descriptor_settings(args)

    def make_extractor(dev: torch.device):
        return build_extractor(load_model(args, dev), settings, max_side=args.max_side,
                               batch_size=args.batch_size, num_workers=args.num_workers)

    manifest = extract_distributed(args.out, paths, make_extractor, boxes, cache_root=args.cache_root,
                                   device=args.device, shard_size=args.shard_size, overwrite=args.overwrite,
                                   retry_failed=args.retry_failed, progress=not args.no_progress,
                                   timeout_hours=args.timeout_hours, dist_timeout=args.dist_timeout)
    if manifest is not None:
        print(f"{manifest['out_dir']}: {manifest['n_images']} images, dim {manifest['dim']}, "
              f"{manifest['n_failed']} failed (see failed.json)")


def _add_train(sub):
    from ..training.loop import TrainConfig
    p = sub.add_parser("train", help="fine-tune a backbone: GeM (learned or fixed p) + projection + ArcFace, "
                                     "CurricularFace or a plain normalised softmax; resumable; torchrun-ready")
    data = p.add_mutually_exclusive_group()
    data.add_argument("--data-root", default="data", help="bundled training split DATA_ROOT/datasets/"
                                                          "synthetic_views_train (default: data)")
    data.add_argument("--gldv2", help="Google Landmarks v2 folder: train.csv or train_clean.csv and train/a/b/c/*.jpg")
    p.add_argument("--gldv2-csv", default="train_clean.csv", choices=("train_clean.csv", "train.csv"))
    p.add_argument("--gldv2-max-classes", type=positive_int("--gldv2-max-classes", 2), default=None,
                   help="keep the landmarks with the most images")
    p.add_argument("--out", required=True, type=writable("--out", folder=True),
                   help="run folder: checkpoint.pt, model.pt, log.csv; an existing run there is resumed")
    p.add_argument("--val-classes", type=positive_int("--val-classes", 0), default=8,
                   help="classes held out for the validation mAP (0: none)")
    p.add_argument("--device", type=device, default="cpu",
                   help="cpu, cuda or cuda:N (under torchrun, cuda is each process's LOCAL_RANK GPU)")
    p.add_argument("--num-workers", type=positive_int("--num-workers", 0), default=2, help="image-decoding processes")
    p.add_argument("--no-progress", action="store_true")
    add_dist_timeout_flag(p)
    add_settings_flags(p, TrainConfig)


def cmd_train(args):
    from ..training import bundled_training_set, gldv2_training_set, train
    config = args.settings["TrainConfig"]
    if args.gldv2:
        data = gldv2_training_set(args.gldv2, args.gldv2_csv, max_classes=args.gldv2_max_classes)
    else:
        data = bundled_training_set(args.data_root)
    data, val = data.split_classes(args.val_classes, seed=config.seed)
    run = train(data, config, args.out, val, device=args.device, num_workers=args.num_workers,
                progress=not args.no_progress, dist_timeout=args.dist_timeout)
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"trained {run.step} steps" + (f" (resumed from step {run.resumed_from})" if run.resumed_from else "")
              + "; GeM p = "
              f"{float(run.model.learned_p):.3f}; wrote {run.checkpoint} and {run.out_dir / 'log.csv'}")


def _add_train_study(sub):
    p = sub.add_parser("train-study", help="train one network per loss (ArcFace, CurricularFace, softmax) on the "
                                           "bundled split and measure learned p, the test-time p sweep and the "
                                           "module table on synthetic_views")
    p.add_argument("--data-root", default="data")
    p.add_argument("--runs", default="runs", type=writable("--runs", folder=True), help="training run folders (resumed when present)")
    p.add_argument("--results", default="results", type=writable("--results", folder=True),
                   help="writes training_PLAN.json and training_PLAN/LOSS_log.csv")
    p.add_argument("--plan", choices=("full", "ci"), default="full",
                   help="full: the README's study (3 losses, 300 steps); ci: ArcFace, 60 steps (minutes)")
    p.add_argument("--losses", nargs="+", choices=("arcface", "curricularface", "softmax"), default=None,
                   help="train only these of the plan's losses (same configuration otherwise)")


def cmd_train_study(args):
    import dataclasses
    import shutil
    from ..experiments import training_study as ts
    plan = ts.FULL_STUDY if args.plan == "full" else ts.CI_STUDY
    if args.losses is not None:
        plan = dataclasses.replace(plan, losses=tuple(dict.fromkeys(args.losses)))
    out = Path(args.results)
    (out / f"training_{plan.name}").mkdir(parents=True, exist_ok=True)   # before the long run: fail now
    folders = ts.train_study_runs(args.data_root, plan, args.runs)
    result = ts.evaluate_study(args.data_root, plan, args.runs, Path(args.data_root) / "cache")
    result.save(out / f"training_{plan.name}.json")
    for loss, folder in folders.items():
        shutil.copyfile(folder / "log.csv", out / f"training_{plan.name}" / f"{loss}_log.csv")
    print(ts.before_after(result).to_string(), ts.p_finding(result).to_string(), ts.module_rows(result).to_string(),
          sep="\n\n")
    print(f"wrote {out / f'training_{plan.name}.json'} and the logs in {out / f'training_{plan.name}'}")


def _add_download(sub):
    def file_digest(text: str) -> tuple:
        """``FILE=HEX`` -> (FILE, lower-case HEX): the expected sha256 of one downloaded file."""
        name, _, digest = text.partition("=")
        if not name or "/" in name or len(digest) != 64 or not set(digest) <= set("0123456789abcdefABCDEF"):
            raise argparse.ArgumentTypeError(f"expected FILE=SHA256 with a file name (no folder) and 64 hexadecimal "
                                             f"characters, like oxbuild_images-v1.tgz={'0' * 64}, got {text!r}")
        return name, digest.lower()

    p = sub.add_parser("download", help="download roxford5k / rparis6k / revisitop1m (needs internet)")
    p.add_argument("dataset", choices=("roxford5k", "rparis6k", "revisitop1m"))
    p.add_argument("--data-root", required=True)
    p.add_argument("--sha256", type=file_digest, action="append", default=[], metavar="FILE=SHA256",
                   help="expected sha256 of one downloaded file, by its name (e.g. gnd_roxford5k.pkl or "
                        "revisitop1m.7.tar.gz); repeatable; checked before the file is kept")


def cmd_download(args):
    from ..data.download import download_revisitop, download_revisitop1m
    sha256 = dict(args.sha256)  # a name the dataset does not download: ValueError before any network access
    if args.dataset == "revisitop1m":
        download_revisitop1m(args.data_root, sha256=sha256)
    else:
        print(download_revisitop(args.dataset, args.data_root, sha256=sha256))


def _add_data_and_demo(sub):
    p = sub.add_parser("build-data", help="fetch the real photos and build the bundled benchmarks")
    p.add_argument("--data-root", default="data", type=writable("--data-root", folder=True))
    p.add_argument("--seed", type=positive_int("--seed", 0), default=0)
    p = sub.add_parser("demo", help="the bundled default end to end: build, extract, rerank, evaluate, table")
    p.add_argument("--data-root", default="data", type=writable("--data-root", folder=True))
    p.add_argument("--results", default="results", type=writable("--results", folder=True))
    p.add_argument("--backbone", type=backbone, default="efficientnet_lite0")
    p.add_argument("--no-whitening", action="store_true", help="skip the whitening learned on the training split")
    p = sub.add_parser("cpu-spread", help="how far demo runs on different CPUs lie apart: "
                                          "the tolerance notebooks 00 and 06 allow against results/demo.json")
    p.add_argument("--run", action="append", required=True, type=_label_dir, metavar="LABEL=RESULTS_DIR",
                   help="a demo run's results folder (its demo.json and demo_machine.json); two or more")
    p.add_argument("--out", default="results/demo_cpu_spread.json", type=writable("--out", folder=False))


def _add_stability(sub):
    p = sub.add_parser("stability", help="rebuild the bundled benchmark with several seeds on two disjoint photo "
                                         "pools; each module's effect with its spread, and when reranking helps")
    p.add_argument("--data-root", default="data", type=writable("--data-root", folder=True))
    p.add_argument("--results", default="results", type=writable("--results", folder=True),
                   help="writes stability.json, stability.md, rerank_gain.png")
    p.add_argument("--plan", choices=("full", "ci"), default="full",
                   help="full: the README's builds; ci: smaller, lower-resolution builds (minutes)")
    p.add_argument("--seeds", type=positive_int("--seeds", 0), nargs="+", default=None,
                   help="override the plan's seeds (at least 3 for the README's table)")
    p.add_argument("--pools", choices=("a", "b"), nargs="+", default=None, help="override the plan's photo pools")


def cmd_stability(args):
    import dataclasses
    from ..experiments import stability as st
    from ..experiments.plots import plot_rerank_gain
    plan = st.FULL_PLAN if args.plan == "full" else st.CI_PLAN
    if args.seeds is not None:
        plan = dataclasses.replace(plan, seeds=tuple(args.seeds))
    if args.pools is not None:
        plan = dataclasses.replace(plan, pools=tuple(args.pools))
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)   # before the long run: an unwritable folder fails now
    result = st.run_stability(args.data_root, plan)
    result.save(out / "stability.json")
    summary = st.effect_summary(st.module_effects(result.maps))
    table = st.markdown_effects(summary)
    rho = st.rerank_gain_correlation(result.rerank)
    text = (f"{len(plan.seeds)} seeds x {len(plan.pools)} photo pools ({args.plan} plan); each module's effect "
            f"in mAP points (mean ± std [min, max] over builds)\n\n{table}\n\nSpearman correlation of the "
            f"rerank gain (Medium) with the base ranking's mP@10: {rho:+.2f}\n")
    (out / "stability.md").write_text(text)
    plot_rerank_gain(result.rerank, path=out / "rerank_gain.png").clf()
    print(st.build_maps_table(result.maps).to_string())
    print("\n" + text)
    print(f"wrote {out / 'stability.json'}, {out / 'stability.md'}, {out / 'rerank_gain.png'}")


def _add_report(sub):
    p = sub.add_parser("report", help="rewrite the README's generated blocks (tables, claims) from results/*.json")
    p.add_argument("--check", action="store_true",
                   help="rewrite nothing; exit 1 naming each block that differs from its results file")
    p.add_argument("--readme", default="README.md")
    p.add_argument("--results", default="results", help="the folder holding demo.json, stability.json, ...")


def cmd_report(args):
    from ..experiments import report
    if not args.check:
        changed = report.update(args.readme, args.results)
        print(f"{args.readme}: rewrote {', '.join(changed)}" if changed else f"{args.readme}: already in sync")
        return
    differences = report.check(args.readme, args.results)
    for message in differences:
        print(message, file=sys.stderr)
    if differences:
        raise SystemExit(1)   # a stale README is a failed check (exit 1), not an input error (exit 2)
    print(f"{args.readme}: every generated block matches {args.results}")


def cmd_build_data(args):
    from ..bundled import build_all
    for name, path in build_all(args.data_root, seed=args.seed).items():
        print(f"{name}: {path}")


def cmd_demo(args):
    from ..demo import run_demo
    run_demo(args.data_root, args.results, args.backbone, whiten=not args.no_whitening)


def _label_dir(text: str) -> tuple:
    label, sep, folder = text.partition("=")
    if not sep or not label or not folder:
        raise argparse.ArgumentTypeError(f"expected LABEL=RESULTS_DIR, got {text!r}")
    return label, folder


def cmd_cpu_spread(args):
    from ..experiments.committed import measure_spread
    runs = dict(args.run)
    if len(runs) != len(args.run):
        raise ValueError("--run: each label once")
    record = measure_spread(runs)
    with open(args.out, "w") as f:
        json.dump(record, f, indent=2)
        f.write("\n")
    print(f"largest difference between runs, mAP points: {record['spread']} -> {args.out}")


def _add_benchmark_checks(sub):
    p = sub.add_parser("design-check", help="does shared context drive the bundled benchmark's rankings? the "
                                            "whitening's and reranking's effects and every ladder step of one build")
    p.add_argument("--data-root", default="data")
    p.add_argument("--name", default="synthetic_views", help="a synthetic_views build under DATA_ROOT/datasets")
    p.add_argument("--label", default="current", help="the key this build's report is stored under")
    p.add_argument("--json", default="results/benchmark_design.json", type=writable("--json", folder=False),
                   help="results file; other labels already in it are kept")
    p = sub.add_parser("rerankers", help="every reranker at its defaults on both bundled benchmarks, and each "
                                         "one tuned on validation queries and scored on test queries")
    p.add_argument("--data-root", default="data")
    p.add_argument("--json", default="results/rerankers.json", type=writable("--json", folder=False))


def cmd_rerankers(args):
    from ..experiments.reranking import reranker_study
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)   # before the long run: an unwritable folder fails now
    result = reranker_study(args.data_root)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result["tuning"], indent=1))
    print(f"wrote {out}")


def cmd_design_check(args):
    from ..experiments.benchmark_design import measure_design
    out = Path(args.json)
    record = json.loads(out.read_text()) if out.is_file() else {}
    out.parent.mkdir(parents=True, exist_ok=True)   # before the long run: an unwritable folder fails now
    record[args.label] = measure_design(args.data_root, args.name)
    out.write_text(json.dumps(record, indent=1, sort_keys=True))
    print(json.dumps({k: record[args.label][k] for k in ("context", "effects")}, indent=1))
    print(f"wrote {out} [{args.label!r}]")


class _OneLineErrors(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the flag, the value, what is accepted) and exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")

    def parse_args(self, args=None, namespace=None):
        parsed = super().parse_args(args, namespace)
        try:
            parsed.settings = parsed_settings(parsed)   # the settings' own range checks, now, before any work
        except ValueError as exc:
            self.error(str(exc))
        return parsed


class _Commands:
    """Subparsers that all take --threads and --debug."""

    def __init__(self, sub):
        self.sub = sub
        self.common = argparse.ArgumentParser(add_help=False)
        self.common.add_argument("--threads", type=positive_int("--threads"), default=None,
                                 help="CPU threads for torch and BLAS (default: the free CPUs, see sglib.runtime)")
        self.common.add_argument("--debug", action="store_true", help="show the traceback of an error")

    def add_parser(self, name, **kwargs):
        return self.sub.add_parser(name, parents=[self.common], **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineErrors(prog="python -m sglib", description=__doc__.split("\n")[0])
    sub = _Commands(parser.add_subparsers(dest="command", required=True, parser_class=_OneLineErrors))
    _add_evaluate(sub)
    _add_rerank(sub)
    _add_extract(sub)
    _add_train(sub)
    _add_train_study(sub)
    _add_download(sub)
    _add_data_and_demo(sub)
    _add_stability(sub)
    _add_report(sub)
    _add_benchmark_checks(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    commands = {"evaluate": cmd_evaluate, "rerank": cmd_rerank, "extract": cmd_extract, "train": cmd_train, "train-study": cmd_train_study,
                "download": cmd_download, "build-data": cmd_build_data, "demo": cmd_demo, "cpu-spread": cmd_cpu_spread, "stability": cmd_stability,
                "report": cmd_report, "design-check": cmd_design_check, "rerankers": cmd_rerankers}
    try:
        configure_threads(args.threads)
        commands[args.command](args)
    except (ValueError, OSError) as exc:   # bad input, missing or unreadable files, failed downloads
        if args.debug:
            raise
        print(f"error: {type(exc).__name__}: {exc}" if isinstance(exc, OSError) and not str(exc).strip()
              else f"error: {exc}", file=sys.stderr)
        return 2
    return 0
