"""Working at scale: the shard store of a descriptor extraction job (``shards``), the extractor, its
resumable loop and the feature cache (``extract``), extraction across processes with ``torchrun -m sglib
extract`` (``distributed``), and distractors (``distractors``). Exact and faiss search is the leaf
:mod:`sglib.search`."""
