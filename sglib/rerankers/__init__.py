"""Rerankers beside SuperGlobal, one calling convention: ``fn(q, x, ranks, M, **params) -> new ranks``.

Each reorders the first M of every query's ranking (the shortlist) from global descriptors alone and
leaves the rest unchanged; numpy in -> numpy out, torch in -> torch out, CPU or CUDA, batched over queries.

* :mod:`~sglib.rerankers.expansion`: alpha-QE, DBA and alpha-DBA;
* :mod:`~sglib.rerankers.k_reciprocal`: k-reciprocal re-ranking (Jaccard distance of reciprocal neighbourhoods);
* :mod:`~sglib.rerankers.diffusion`: diffusion on the truncated kNN graph, conjugate gradient;
* :mod:`~sglib.rerankers.graph`: the offline database kNN graph that DBA and diffusion read, cacheable.

:data:`RERANKERS` names every method with its defaults and source, SuperGlobal's side ablation included;
:func:`rerank` runs one by name. Local-feature verification (images, not descriptors) is :mod:`sglib.local`.

Example:
    >>> import numpy as np
    >>> x = np.eye(30, dtype=np.float32); q = x[:2] + 0.1
    >>> q /= np.linalg.norm(q, axis=1, keepdims=True)            # rerankers take unit rows
    >>> ranks = np.argsort(-q @ x.T, axis=1)
    >>> rerank("alpha_qe", q, x, ranks, M=20).shape
    (2, 30)
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from ..method.rerank import DEFAULT_BETA, DEFAULT_K, superglobal
from . import diffusion as _diffusion
from . import k_reciprocal as _k_reciprocal
from .expansion import DBA_DEFAULTS, QE_DEFAULTS, alpha_dba, alpha_qe
from .graph import DatabaseGraph, database_graph


@dataclasses.dataclass(frozen=True)
class Reranker:
    """One reranking method: ``fn(q, x, ranks, M, **params)``, its default ``params``, where they come from,
    and whether it reads the offline database graph (``graph=``, with ``params["k"]`` neighbours)."""

    label: str
    fn: Callable
    defaults: dict
    source: str
    uses_graph: bool = False

    def __call__(self, q, x, ranks, M: int, graph: DatabaseGraph | None = None, **params):
        unknown = set(params) - set(self.defaults)
        if unknown:
            raise ValueError(f"{self.label}: unknown parameter(s) {sorted(unknown)}; it takes {sorted(self.defaults)}")
        kwargs = {**self.defaults, **params}
        if self.uses_graph:
            kwargs["graph"] = graph
        elif graph is not None:
            raise ValueError(f"{self.label} does not read a database graph: pass graph=None")
        return self.fn(q, x, ranks, M, **kwargs)


def _superglobal_sides(sides):
    def fn(q, x, ranks, M, K=DEFAULT_K, beta=DEFAULT_BETA):
        return superglobal(q, x, ranks, M, K, beta, sides=sides)
    return fn


_SG = {"K": DEFAULT_K, "beta": DEFAULT_BETA}
RERANKERS = {
    "superglobal": Reranker("SuperGlobal", _superglobal_sides("both"), _SG, "Shao et al., ICCV 2023 (M=400, K=9, beta=0.15)"),
    "superglobal_query": Reranker("SuperGlobal, query side only", _superglobal_sides("query"), _SG,
                                  "the paper's ablation: expanded query, candidates not refined"),
    "superglobal_database": Reranker("SuperGlobal, database side only", _superglobal_sides("database"), _SG,
                                     "the paper's ablation: refined candidates, query kept"),
    "alpha_qe": Reranker("alpha-QE", alpha_qe, QE_DEFAULTS,
                         "Radenovic et al., TPAMI 2018 (alpha=3); n=10 is ours"),
    "dba": Reranker("DBA", alpha_dba, {**DBA_DEFAULTS, "alpha": 0.0},
                    "Arandjelovic & Zisserman, CVPR 2012 (equal weights); k=10 is ours", uses_graph=True),
    "alpha_dba": Reranker("alpha-DBA", alpha_dba, DBA_DEFAULTS,
                          "Radenovic et al., TPAMI 2018 (alpha=3); k=10 is ours", uses_graph=True),
    "k_reciprocal": Reranker("k-reciprocal", _k_reciprocal.k_reciprocal, _k_reciprocal.DEFAULTS,
                             "Zhong et al., CVPR 2017 (k1=20, k2=6, lambda=0.3)"),
    "diffusion": Reranker("diffusion", _diffusion.diffusion, _diffusion.DEFAULTS,
                          "Iscen et al., CVPR 2017 (k=50, gamma=3, alpha=0.99, 20 CG steps)", uses_graph=True),
}


def rerank(method: str, q, x, ranks, M: int, graph: DatabaseGraph | None = None, **params):
    """Rerank with the method named ``method`` (a key of :data:`RERANKERS`), its defaults overridden by ``params``."""
    if method not in RERANKERS:
        raise ValueError(f"method: expected one of {sorted(RERANKERS)}, got {method!r}")
    return RERANKERS[method](q, x, ranks, M, graph=graph, **params)


def check_methods(methods, params: dict | None = None) -> list:
    """``methods`` as a list of known method names, and ``params`` (``{method: {param: value}}``) naming only them;
    ValueError otherwise (a misspelt name would silently run the defaults)."""
    if isinstance(methods, str) or not all(isinstance(m, str) for m in methods):
        raise ValueError(f"methods: expected a list of method names (keys of RERANKERS), got {methods!r}")
    methods = list(methods)
    unknown = [m for m in methods if m not in RERANKERS] + [m for m in (params or {}) if m not in methods]
    if unknown:
        raise ValueError(f"methods / params: {unknown} are not among the methods run ({methods}); known methods: "
                         f"{sorted(RERANKERS)}")
    return methods


def graph_neighbours(methods, params: dict | None = None) -> int:
    """The largest graph ``k`` the given methods need (0 when none reads the graph); ``params``:
    ``{method: {param: value}}`` overrides, a value being one k or a list of k values (a tuning grid)."""
    params = params or {}
    ks = [0]
    for m in check_methods(methods, params):
        if RERANKERS[m].uses_graph:
            k = params.get(m, {}).get("k", RERANKERS[m].defaults["k"])
            ks.extend(k if isinstance(k, (list, tuple)) else [k])
    return max(ks)


__all__ = ["RERANKERS", "Reranker", "rerank", "check_methods", "graph_neighbours", "database_graph", "DatabaseGraph"]
