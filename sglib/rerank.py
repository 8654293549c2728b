"""``sglib.rerank``, the name ``../shared/spec/api.md`` gives SuperGlobal reranking.

The code is in :mod:`sglib.method.rerank`; this file only re-exports it (the library itself imports
the method module). The other rerankers (alpha-QE, DBA, ...) are in :mod:`sglib.rerankers`.
"""
from .method.rerank import (DEFAULT_BETA, DEFAULT_K, DEFAULT_M, SIDES, superglobal, superglobal_candidates,
                            superglobal_scores)

__all__ = ["superglobal", "superglobal_candidates", "superglobal_scores", "DEFAULT_M", "DEFAULT_K", "DEFAULT_BETA",
           "SIDES"]
