"""Experiment code the notebooks and ``make demo`` share: the module-by-module tables and the
training-split whitening (``tables``), the pooling ablation grid (``ablations``), and plots (``plots``)."""
