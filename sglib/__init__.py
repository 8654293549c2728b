"""sglib: SuperGlobal (Shao et al., ICCV 2023) global-feature retrieval and reranking.

Submodules load on first use (``sglib.pooling``, ``sglib.models``, ``sglib.rerank``,
``sglib.evaluate``, ``sglib.search``, ...), so ``import sglib`` stays cheap.
"""
import importlib

__version__ = "0.1.0"

_SUBMODULES = {
    "pooling", "describe", "preprocess", "models", "rerank", "rerank_reference", "evaluate",
    "evaluate_large", "search", "datasets", "download", "extract", "distributed", "whitening",
    "photos", "benchmarks", "pipeline", "cli", "demo", "ablations", "distractors", "viz",
}


def __getattr__(name):
    if name in _SUBMODULES:
        module = importlib.import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module 'sglib' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | _SUBMODULES)
