"""The method of the paper: pooling (GeM, GeM+, Regional-GeM, Scale-GeM, ReLU+), descriptors from
feature maps, and SuperGlobal reranking (with a readable per-query reference). It imports nothing
from evaluation, experiments or the scale layer."""
