"""End-to-end retrieval on a revisitop-format dataset: extract (cached), rank, rerank, evaluate.

Shared by the command line (``python -m sglib``), ``make demo`` and the notebooks, so all of
them compute the same numbers from the same cached features.

Several pooling settings are computed in one pass over the images: the backbone runs once per
scale and every setting re-pools those maps (:func:`sglib.describe.pooled_vector`), which is exact
since the maps depend only on the input scale.
"""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from .describe import DescriptorSettings, combine_scales, pooled_vector, resize_input
from .evaluate import PROTOCOLS, revisited
from .extract import Extractor, cached_features, state_sha256
from .preprocess import CVNET, load_network_input
from .rerank import DEFAULT_BETA, DEFAULT_K, DEFAULT_M, junk_to_end, superglobal


@dataclasses.dataclass(frozen=True)
class RerankSettings:
    """SuperGlobal reranking parameters; ``per_protocol_shortlist`` drops each protocol's junk
    from the shortlist first (DELG/CVNet/AMES practice) instead of the reference's shared one."""

    M: int = DEFAULT_M
    K: int = DEFAULT_K
    beta: float = DEFAULT_BETA
    per_protocol_shortlist: bool = False


def _pooling_parts(model):
    """(feature_map fn, per-scale head, learned p or None) of a CVNet or ImageNet backbone."""
    if hasattr(model, "describe_with"):              # SuperGlobalNet: CVNet head fc, learned GeM p
        return model.feature_map, model.head.fc, model.head.pool.p
    return model.feature_map, model.head, None


def multi_settings_extractor(model: torch.nn.Module, settings: Mapping[str, DescriptorSettings], *,
                             max_side: int | None = None, name: str | None = None) -> Extractor:
    """An :class:`~sglib.extract.Extractor` whose rows are the concatenated descriptors of every setting.

    The backbone runs once per distinct scale; split the rows with :func:`split_settings`.
    """
    if not settings:
        raise ValueError("settings: give at least one named DescriptorSettings")
    feature_map, head, learned_p = _pooling_parts(model)
    scales = sorted({s for st in settings.values() for s in st.scales})
    device = next(model.parameters()).device

    @torch.no_grad()
    def describe(x):
        x = x.to(device)
        maps = {s: feature_map(resize_input(x, s)) for s in scales}
        pooled = {}   # settings that differ only in scales / aggregation share their per-scale vectors
        out = []
        for st in settings.values():
            pooling_key = (st.gem_p, st.regional) + ((st.regional_p, st.regional_kernel) if st.regional else ())
            for s in st.scales:
                if (s,) + pooling_key not in pooled:
                    pooled[(s,) + pooling_key] = pooled_vector(maps[s], head, st, learned_p)
            out.append(combine_scales([pooled[(s,) + pooling_key] for s in st.scales], st))
        return torch.cat(out, dim=1)

    norm = getattr(model, "normalization", CVNET)
    identity = {"model": name or getattr(model, "name", type(model).__name__), "state": state_sha256(model),
                "settings": {k: v.as_dict() for k, v in settings.items()}, "norm": dataclasses.asdict(norm),
                "max_side": max_side, "relu_plus": getattr(model, "relu_plus", None)}

    def load(path, bbx):
        return load_network_input(path, bbx, norm=norm, max_side=max_side)

    return Extractor(describe, load, identity)


def folder_fingerprint(folder) -> str:
    """sha256 of a dataset folder's description files (``build_info.json``, ``gnd_*.pkl``, ``*.csv``).

    The feature cache keys on image paths; a generated benchmark rebuilt with other parameters keeps
    its paths, so its description files go into the key too.
    """
    folder = Path(folder)
    digest = hashlib.sha256()
    for f in sorted([*folder.glob("build_info.json"), *folder.glob("gnd_*.pkl"), *folder.glob("*.csv")]):
        digest.update(f.name.encode() + b"\0" + f.read_bytes())
    return digest.hexdigest()


def with_data_identity(extractor: Extractor, folder) -> Extractor:
    """``extractor`` whose cache key also covers :func:`folder_fingerprint` of ``folder``."""
    return dataclasses.replace(extractor, identity={**extractor.identity, "data": folder_fingerprint(folder)})


def split_settings(features: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Undo :func:`multi_settings_extractor`'s concatenation: (N, S*D) -> {name: (N, D)}."""
    parts = np.split(features, len(names), axis=1)
    return dict(zip(names, parts))


def dataset_features(dataset, extractor: Extractor, cache_root, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(queries (nq, D), database (N, D)) descriptors of a :class:`~sglib.datasets.RevisitopDataset`, cached.

    Queries are cropped to their bounding boxes, as the reference does.
    """
    extractor = with_data_identity(extractor, dataset.root)
    db = cached_features(cache_root, dataset.db_paths(), extractor, progress=progress)
    boxes = [dataset.query_bbx(i) for i in range(dataset.n_queries)]
    q = cached_features(cache_root, dataset.query_paths(), extractor, bboxes=boxes, progress=progress)
    return q, db


def rank_database(q: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Full ranking by descending inner product, ties by lower index: (nq, D), (N, D) -> (nq, N)."""
    scores = torch.from_numpy(np.ascontiguousarray(q, np.float32)) @ torch.from_numpy(
        np.ascontiguousarray(x, np.float32)).T
    return torch.sort(scores, dim=1, descending=True, stable=True).indices.numpy()


def retrieve(q: np.ndarray, x: np.ndarray, rerank: RerankSettings | None = None) -> np.ndarray:
    """Full rankings (nq, N), the top-M reranked with SuperGlobal when ``rerank`` is given (shared shortlist).

    ``rerank.M`` larger than the database is capped at its size.
    """
    ranks = rank_database(q, x)
    if rerank is None:
        return ranks
    return superglobal(q, x, ranks, min(rerank.M, x.shape[0]), rerank.K, rerank.beta)


def evaluate_retrieval(q: np.ndarray, x: np.ndarray, gnd: list, rerank: RerankSettings | None = None,
                       ks=(1, 5, 10)) -> dict:
    """Rank, optionally rerank with SuperGlobal, and evaluate: :func:`sglib.evaluate.revisited`'s dict.

    ``rerank.M`` larger than the database is capped at its size (``result["M"]`` says what was used).
    """
    if rerank is None or not rerank.per_protocol_shortlist:
        out = revisited(retrieve(q, x, rerank), gnd, ks)
        if rerank is not None:
            out["M"] = min(rerank.M, x.shape[0])
        return out
    ranks = rank_database(q, x)
    m = min(rerank.M, x.shape[0])
    out = {p: revisited(superglobal(q, x, junk_to_end(ranks, gnd, p), m, rerank.K, rerank.beta), gnd, ks)[p]
           for p in PROTOCOLS}
    out["M"] = m
    return out
