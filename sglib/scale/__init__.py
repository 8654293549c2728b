"""Working at scale: blocked exact and faiss approximate search (``search``), sharded resumable
extraction and the feature cache (``extract``), extraction across processes (``distributed``), and
distractors (``distractors``)."""
