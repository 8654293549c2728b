"""``sglib.pooling``, the name ``../shared/spec/api.md`` gives the pooling operators.

The code is in :mod:`sglib.method.pooling`; this file only re-exports it (the library itself imports
the method module).
"""
from .method.pooling import GeM, gem, regional_gem, relu_plus, scale_gem, scale_mean

__all__ = ["gem", "regional_gem", "scale_gem", "scale_mean", "relu_plus", "GeM"]
