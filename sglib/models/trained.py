"""Networks fine-tuned by :mod:`sglib.training`: the checkpoint format and loading it as a backbone.

A training checkpoint is one ``torch.save`` dict (readable with ``weights_only=True``):

=============  ===================================================================================
``format``     :data:`FORMAT`
``backbone``   architecture name (:data:`sglib.models.imagenet.BACKBONES`, or :data:`CVNET_BACKBONES`)
``model``      the :class:`~sglib.models.imagenet.ImageNetBackbone` state: ``body.*``, ``head.weight``
               and ``head.bias`` (the (dim, C) projection applied to the L2-normalised GeM vector),
               ``gem_p`` (the GeM exponent, learned or fixed during training); for a CVNet-layout
               ResNet, the :class:`~sglib.models.cvnet.SuperGlobalNet` state (its own names)
``step``       optimisation steps done
``config``     the :class:`sglib.training.TrainConfig` as a dict
``classes``    the class names, in label order
``data``       fingerprint of the training images and labels (a resumed run must have the same)
``base_weights``, ``relu_plus``  where the weights started (sha256 or path), the CVNet ReLU+ setting
``state``      only in resumable checkpoints: loss, optimizer and gradient-scaler states
=============  ===================================================================================

:func:`load_trained` turns either file (``checkpoint.pt`` during training, ``model.pt`` at the end)
into a backbone that the extraction path, ``python -m sglib evaluate --checkpoint`` and the notebooks
use like any other; ``DescriptorSettings(gem_p=None)`` pools with the trained p.
"""
from __future__ import annotations

import os

import torch
import torch.nn as nn

from .checkpoint import CheckpointError, load_state_strict, read_torch_file
from .imagenet import ImageNetBackbone, build_architecture, file_sha256

FORMAT = "sglib-train/1"
# CVNet-layout ResNets fine-tuned from a CVNet checkpoint: name -> depth. They train with the reference's
# "ReLU+ off" network (the one SuperGlobal's ablation starts from) and keep CVNet's own GeM p and 2048 x 2048 head.
CVNET_BACKBONES = {"cvnet_r50": 50, "cvnet_r101": 101}
CVNET_TRAIN_RELU_PLUS = False


def read_training_file(path) -> dict | None:
    """The checkpoint dict if ``path`` is an sglib training checkpoint, None if it is another torch file.

    Raises:
        CheckpointError: missing or unreadable file, or a training checkpoint missing a field.
    """
    blob = read_torch_file(path)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        return None
    missing = [k for k in ("backbone", "model", "step", "config", "classes") if k not in blob]
    if missing:
        raise CheckpointError(f"{path}: training checkpoint without {', '.join(missing)}: the file is damaged")
    kinds = {"backbone": str, "model": dict, "step": int, "config": dict, "classes": list}
    wrong = [k for k, t in kinds.items() if not isinstance(blob[k], t) or isinstance(blob[k], bool)]
    if "state" in blob and not isinstance(blob["state"], dict):
        wrong.append("state")
    if wrong:
        raise CheckpointError(f"{path}: training checkpoint whose {', '.join(wrong)} has the wrong type: the file is "
                              "damaged")
    return blob


def trained_backbone(name: str, dim: int, gem_p: float, learn_p: bool, weights_id: str,
                     base: ImageNetBackbone | None = None) -> ImageNetBackbone:
    """The network trained by :mod:`sglib.training`: ``base`` (or an untrained skeleton) with a GeM p and a projection.

    The projection is a ``Linear(C, dim)``; ``gem_p`` a one-element parameter, trainable when ``learn_p``.
    """
    base = base if base is not None else build_architecture(name)
    p = nn.Parameter(torch.tensor([float(gem_p)]), requires_grad=bool(learn_p))
    return ImageNetBackbone(base.name, base.body, base.out_dim, base.normalization, weights_id, classifier=None,
                            head=nn.Linear(base.out_dim, int(dim)), gem_p=p)


def load_trained(path, device="cpu", relu_plus: bool | None | str = "recorded") -> ImageNetBackbone:
    """A network fine-tuned by ``python -m sglib train`` (its ``checkpoint.pt`` or ``model.pt``), in eval mode.

    Example:
        >>> net = load_trained("runs/arcface/model.pt")            # doctest: +SKIP
        >>> net.describe(x, DescriptorSettings(gem_p=None))      # doctest: +SKIP

    Args:
        relu_plus: for a CVNet-layout run, the ReLU+ setting at inference (True, False or None as in
            :func:`~sglib.models.load_cvnet`); ``"recorded"`` keeps the one it was trained with.

    Raises:
        CheckpointError: not a training checkpoint, or its tensors do not fit the recorded architecture.
        ValueError: ``relu_plus`` set for a network that is not a CVNet ResNet.
    """
    path = os.fspath(path)
    blob = read_training_file(path)
    if blob is None:
        raise CheckpointError(f"{path} is not an sglib training checkpoint (format {FORMAT!r}): use load_backbone "
                              "for ImageNet weights or load_cvnet for CVNet's")
    state = blob["model"]
    name = blob["backbone"]
    if name in CVNET_BACKBONES:
        from .cvnet import SuperGlobalNet
        if relu_plus == "recorded":
            relu_plus = blob.get("relu_plus", CVNET_TRAIN_RELU_PLUS)
        model = SuperGlobalNet(CVNET_BACKBONES[name], relu_plus=relu_plus)
        load_state_strict(model, state, path, f"trained {name}")
    else:
        if relu_plus != "recorded":
            raise ValueError(f"relu_plus: {path} is a trained {name}, which has no ReLU+ (a CVNet ResNet setting)")
        if not isinstance(state, dict) or "head.weight" not in state or "gem_p" not in state:
            raise CheckpointError(f"{path}: its model state has no head.weight or gem_p: the file is damaged")
        dim = int(state["head.weight"].shape[0])
        model = trained_backbone(name, dim, 3.0, learn_p=False, weights_id=file_sha256(path))
        load_state_strict(model, state, path, f"trained {name} (projection to {dim})")
    p = float(model.learned_p.detach())
    if not 0 < p < 100:
        raise CheckpointError(f"{path}: GeM exponent {p} is outside (0, 100): the file is damaged")
    model.learned_p.requires_grad_(False)
    return model.eval().to(device, memory_format=torch.channels_last)


__all__ = ["FORMAT", "CVNET_BACKBONES", "CVNET_TRAIN_RELU_PLUS", "read_training_file", "trained_backbone", "load_trained"]
