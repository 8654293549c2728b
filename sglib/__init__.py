"""sglib: SuperGlobal (Shao et al., ICCV 2023) global-feature retrieval and reranking.

Packages by role, lowest layer first (``tests/test_layering.py`` keeps imports pointing down; each
package loads on first use, so ``import sglib`` stays cheap):

* ``sglib.search``: blocked exact search and faiss indexes (a leaf);
* ``sglib.method``: pooling, descriptors from feature maps, SuperGlobal reranking, margin losses;
* ``sglib.timing``: methods timed side by side (warm-up, repeats, median, log-log growth);
* ``sglib.data``: revisitop datasets, downloads, image preprocessing;
* ``sglib.models``: CVNet ResNet and ImageNet backbones (one interface), checkpoints, whitening;
* ``sglib.evaluate``: the revisited protocol, its streaming form, shortlists, the retrieval path;
* ``sglib.rerankers``: alpha-QE, DBA, k-reciprocal and diffusion beside SuperGlobal, one calling convention;
* ``sglib.local``: local-feature (SIFT + RANSAC) spatial verification, the two-stage baseline;
* ``sglib.scale``: the sharded feature store, extraction and its cache, torchrun, distractors;
* ``sglib.training``: ArcFace / CurricularFace fine-tuning, resumable, DDP;
* ``sglib.bundled``: the real photos shipped by pip / apt packages, the benchmarks built from them, and
  the whitening fitted on their training split;
* ``sglib.experiments``: module tables, ablation grid, plots shared by the notebooks and ``make demo``;
* ``sglib.demo``, ``sglib.cli``: ``make demo`` and the command line.

``sglib.pooling`` and ``sglib.rerank`` are the names ``../shared/spec/api.md`` gives
``sglib.method.pooling`` and ``sglib.method.rerank``: two files of re-exports, never imported by the
library itself.
"""
import importlib
import os

# Waiting OpenMP threads sleep instead of spinning, so a job that shares the CPU with another busy
# process slows down in proportion instead of crawling (measured in sglib.runtime). It is set here,
# not only in the CLI, because notebooks and scripts import sglib, not the CLI, and it must be in the
# environment before torch loads its OpenMP runtime; setdefault keeps a value the user chose.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

_SUBMODULES = ("search", "method", "pooling", "rerank", "timing", "data", "models", "evaluate", "rerankers", "local",
               "bundled", "scale", "training", "experiments", "runtime", "demo", "cli")


def __getattr__(name):
    if name in _SUBMODULES:
        module = importlib.import_module(f"{__name__}.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'sglib' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_SUBMODULES))
