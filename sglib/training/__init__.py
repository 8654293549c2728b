"""Fine-tuning a backbone with GeM (learned or fixed p) and a margin loss: data, the loop, the study of p.

* :mod:`~sglib.training.data` -- labelled image sets (bundled split, Google Landmarks v2), seeded batches
  and augmentations;
* :mod:`~sglib.training.loop` -- :class:`TrainConfig` and :func:`train` (resumable, ``torchrun``-ready).

The trained network loads with :func:`sglib.models.load_trained`.
"""
from .data import (Augmentation, TrainingSet, bundled_training_set, gldv2_image_path, gldv2_training_set)
from .loop import TrainConfig, TrainRun, class_map, lr_factor, read_log, train

__all__ = ["Augmentation", "TrainingSet", "bundled_training_set", "gldv2_training_set", "gldv2_image_path",
           "TrainConfig", "TrainRun", "train", "class_map", "lr_factor", "read_log"]
