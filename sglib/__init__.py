"""sglib: SuperGlobal (Shao et al., ICCV 2023) global-feature retrieval and reranking.

Packages by role (each loads on first use, so ``import sglib`` stays cheap):

* ``sglib.method``: pooling, descriptors from feature maps, SuperGlobal reranking;
* ``sglib.rerankers``: alpha-QE, DBA, k-reciprocal and diffusion beside SuperGlobal, one calling convention;
* ``sglib.local``: local-feature (SIFT + RANSAC) spatial verification, the two-stage baseline;
* ``sglib.timing``: methods timed side by side (warm-up, repeats, median, log-log growth);
* ``sglib.training``: ArcFace / CurricularFace fine-tuning, resumable, DDP;
* ``sglib.models``: CVNet ResNet and ImageNet backbones (one interface), checkpoints, whitening;
* ``sglib.data``: revisitop datasets, downloads, image preprocessing;
* ``sglib.evaluation``: the revisited protocol, its streaming form, shortlists, the retrieval path;
* ``sglib.scale``: blocked and faiss search, sharded extraction and the feature cache, torchrun, distractors;
* ``sglib.embedded``: the real photos and the benchmarks built from them;
* ``sglib.experiments``: module tables, ablation grid, plots shared by the notebooks and ``make demo``.

The entry points of ``../shared/spec/api.md`` keep their names: ``sglib.pooling``, ``sglib.rerank``,
``sglib.evaluate`` and ``sglib.search`` are the modules ``sglib.method.pooling``,
``sglib.method.rerank``, ``sglib.evaluation`` and ``sglib.scale.search`` (also importable by those names).
"""
import importlib
import importlib.abc
import importlib.util
import os
import sys

# Before torch loads its OpenMP runtime: waiting threads sleep instead of spinning, so a run that shares
# the CPU with another busy process slows down in proportion instead of crawling (see sglib.runtime).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

_PACKAGES = {"method", "models", "data", "evaluation", "scale", "embedded", "experiments", "cli", "demo", "runtime",
             "rerankers", "local", "timing", "training"}
ALIASES = {"pooling": "sglib.method.pooling", "rerank": "sglib.method.rerank", "evaluate": "sglib.evaluation",
           "search": "sglib.scale.search"}


def _real_name(fullname: str) -> str | None:
    """``sglib.evaluate.streaming`` -> ``sglib.evaluation.streaming``; None when no alias applies."""
    for alias, real in ALIASES.items():
        prefix = f"sglib.{alias}"
        if fullname == prefix or fullname.startswith(prefix + "."):
            return real + fullname[len(prefix):]
    return None


class _AliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Lets ``import sglib.pooling`` (and the other :data:`ALIASES`, submodules included) give the very
    module it names: one module object under two names, its own ``__spec__`` kept (so reload works)."""

    def __init__(self):
        self._own_specs = {}

    def find_spec(self, fullname, path=None, target=None):
        real = _real_name(fullname)
        return importlib.util.spec_from_loader(fullname, self) if real else None

    def create_module(self, spec):
        module = importlib.import_module(_real_name(spec.name))
        self._own_specs[module.__name__] = module.__spec__
        return module

    def exec_module(self, module):
        # the import system has just set module.__spec__ to the alias spec: give the module its own back
        module.__spec__ = self._own_specs.pop(module.__name__)


# first in line (a submodule of an alias must not be found a second time through the package's path),
# and only one of us, also after importlib.reload(sglib)
sys.meta_path[:] = [_AliasFinder()] + [f for f in sys.meta_path if type(f).__name__ != "_AliasFinder"]


def __getattr__(name):
    if name in _PACKAGES or name in ALIASES:
        module = importlib.import_module(ALIASES.get(name, f"{__name__}.{name}"))
        globals()[name] = module
        return module
    raise AttributeError(f"module 'sglib' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | _PACKAGES | set(ALIASES))
