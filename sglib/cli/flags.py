"""Flags of the command line: the settings dataclasses' fields as flags, the model flags, value parsers.

Every field of :class:`~sglib.method.descriptors.DescriptorSettings`,
:class:`~sglib.evaluate.retrieval.RerankSettings` and :class:`~sglib.training.loop.TrainConfig` is a
flag made here from the field itself (:func:`sglib._settings.setting`): ``--name-with-dashes``, its
default, its help, ``--x / --no-x`` for a bool. The value parsers below only turn text into a number;
the range checks are the dataclass's ``__post_init__`` (run by :func:`settings_from_args`, whose error
names the flag). Flags that are not settings (files, devices, extraction knobs) are written here by hand.
"""
from __future__ import annotations

import argparse
import dataclasses
import re
import tempfile
from pathlib import Path

import torch

from ..data.preprocess import MIN_MAX_SIDE
from ..method.descriptors import DescriptorSettings

RELU_PLUS = {"on": True, "off": False, "none": None}


# ------------------------------------------------------------------------------------- value parsers

def integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def positive_int(flag: str, minimum: int = 1):
    """A parser of integers >= ``minimum``, for the flags that are not settings fields."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value
    parse.__name__ = flag
    return parse


def relu_plus(text: str):
    """The name itself (a key of :data:`RELU_PLUS`): its value None means "no floor", so None can't mean "not given"."""
    if text not in RELU_PLUS:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(RELU_PLUS)}, got {text!r}")
    return text


def device(text: str) -> str:
    if text == "cpu":
        return text
    if text == "cuda" or (text.startswith("cuda:") and text[5:].isdigit()):
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text!r} asked for, but no CUDA device is visible: use cpu")
        if ":" in text and int(text[5:]) >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text!r}: only {torch.cuda.device_count()} CUDA device(s)")
        return text
    raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")


def backbone(text: str) -> str:
    from ..models.imagenet import BACKBONES
    key = text.lower().replace("-", "_")
    if key not in BACKBONES:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(BACKBONES)}, got {text!r}")
    return key


def writable(flag: str, folder: bool):
    """A path the command will write: a folder (``folder``) or a file, whose nearest existing parent is writable."""
    def parse(text: str) -> Path:
        if not text.strip():
            raise argparse.ArgumentTypeError("expected a path, got an empty string")
        path = Path(text)
        probe = path.parent if not path.exists() else path
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if path.exists() and path.is_dir() != folder:
            why = "it is a file, not a folder" if folder else "it is a folder"
        elif not path.exists() and not probe.is_dir():
            why = f"{str(probe)!r} is a file, so nothing can be created under it"
        elif not _can_create_in(probe if probe.is_dir() else probe.parent):
            why = "nothing can be created there (no write permission, a read-only or virtual file system)"
        else:
            return path
        raise argparse.ArgumentTypeError(f"cannot write {text!r}: {why}")
    parse.__name__ = flag
    return parse


def _can_create_in(folder: Path) -> bool:
    """Whether a file can be created in ``folder``: tried, not inferred from permission bits, which say yes
    to root on /proc or a read-only mount."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


# ------------------------------------------------------------------------------------- settings as flags

_PLAIN_PARSERS = {int: integer, float: number, str: str}


def flag_name(field: dataclasses.Field) -> str:
    """The flag of a settings field: its ``flag`` metadata, else ``--`` + the name with dashes."""
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


_SETTINGS_KEY = "settings_class_"


def add_settings_flags(parser: argparse.ArgumentParser, settings_class) -> None:
    """One flag per field of ``settings_class`` (a dataclass declared with :func:`sglib._settings.setting`),
    stored under the field's name, defaulting to the field's default. :func:`parsed_settings` then builds
    the dataclass, so its ``__post_init__`` checks the values as the command line is parsed."""
    parser.set_defaults(**{_SETTINGS_KEY + settings_class.__name__: settings_class})
    group = parser.add_argument_group(f"{settings_class.__name__} settings")
    for field in dataclasses.fields(settings_class):
        meta = field.metadata
        if "help" not in meta:
            raise TypeError(f"{settings_class.__name__}.{field.name} has no help: declare it with "
                            "sglib._settings.setting")
        text = meta["help"].replace("%", "%%")
        kwargs = {"dest": field.name, "default": field.default,
                  "help": text if "(default" in text else text + " (default: %(default)s)"}
        if isinstance(field.default, bool) and meta["parse"] is None:
            group.add_argument(flag_name(field), action=argparse.BooleanOptionalAction, **kwargs)
            continue
        parse = _argparse_type(meta["parse"]) if meta["parse"] else _PLAIN_PARSERS[type(field.default)]
        group.add_argument(flag_name(field), type=parse, metavar=meta["metavar"], **kwargs)


def _argparse_type(parse):
    """``parse``'s ValueError as argparse's error, so the one-line message is the parser's own."""
    def convert(text: str):
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return convert


def settings_from_args(settings_class, args: argparse.Namespace):
    """``settings_class`` from the parsed flags; its ``__post_init__`` error, if any, as a ValueError that
    starts with the flags it names (``argument --K / --M: ...``)."""
    fields = dataclasses.fields(settings_class)
    try:
        return settings_class(**{f.name: getattr(args, f.name) for f in fields if hasattr(args, f.name)})
    except ValueError as exc:
        named = [flag_name(f) for f in fields if re.search(rf"\b{re.escape(f.name)}\b", str(exc))]
        raise ValueError(f"argument {' / '.join(named)}: {exc}" if named else str(exc)) from None


def parsed_settings(args: argparse.Namespace) -> dict:
    """``{class name: instance}`` of every settings dataclass whose flags the parsed command has."""
    return {key[len(_SETTINGS_KEY):]: settings_from_args(cls, args) for key, cls in vars(args).items()
            if key.startswith(_SETTINGS_KEY)}


# ------------------------------------------------------------------------------------- model and extraction

def add_model_flags(p: argparse.ArgumentParser, required: bool = True) -> None:
    """--checkpoint / --backbone and what goes with them."""
    model = p.add_mutually_exclusive_group(required=required)
    model.add_argument("--checkpoint", help="CVNet checkpoint (CVPR2022_CVNet_R50.pyth / _R101.pyth), or a network "
                                            "fine-tuned by `sglib train` (its model.pt or checkpoint.pt)")
    model.add_argument("--backbone", type=backbone,
                       help="ImageNet backbone: efficientnet_lite0, mobilenet_v2, resnet50, resnet101")
    p.add_argument("--weights", help="weights file for --backbone resnet50/101")
    p.add_argument("--whitening", help="whitening .npz (sglib.models.whitening) applied as the head of --backbone")
    # both default to None (not given) so that a flag a model cannot use is refused, not ignored
    p.add_argument("--depth", type=int, default=None, choices=(50, 101),
                   help="ResNet depth of a CVNet --checkpoint (default 50)")
    p.add_argument("--relu-plus", type=relu_plus, default=None, metavar="{on,off,none}",
                   help="ReLU+ of a CVNet --checkpoint: on (default), off (the reference's off), none (no floor "
                        "anywhere)")


def add_descriptor_flags(p: argparse.ArgumentParser) -> None:
    """The SuperGlobal pooling settings and the extraction knobs."""
    add_settings_flags(p, DescriptorSettings)
    p.add_argument("--max-side", type=positive_int("--max-side", MIN_MAX_SIDE), default=None,
                   help="downscale images larger than this (default: full size)")
    p.add_argument("--batch-size", type=positive_int("--batch-size"), default=1,
                   help="images of equal size described together (part of the cache key)")
    p.add_argument("--num-workers", type=positive_int("--num-workers", 0), default=2, help="image-decoding threads")


def add_dist_timeout_flag(p: argparse.ArgumentParser) -> None:
    """--dist-timeout, of the commands that run under torchrun (train, extract)."""
    from ..runtime import DEFAULT_DIST_TIMEOUT, check_dist_timeout

    def seconds(text: str) -> float:
        try:
            return check_dist_timeout(float(text))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}") from None
    p.add_argument("--dist-timeout", type=seconds, default=DEFAULT_DIST_TIMEOUT, metavar="SECONDS",
                   help="under torchrun: a process that runs no code this long (stopped, hung, on a lost machine) "
                        "ends every process, naming its rank; a process that fails ends them at once "
                        "(default: %(default)g)")


def descriptor_settings(args) -> DescriptorSettings:
    """The DescriptorSettings the flags give, checked against the model flags."""
    if args.gem_p is None and not args.checkpoint:
        raise ValueError("--gem-p learned needs a --checkpoint (CVNet's, or one written by `sglib train`): an "
                         "ImageNet --backbone has no learned p")
    if args.checkpoint and (args.whitening or args.weights):
        raise ValueError("--whitening and --weights go with --backbone; a CVNet --checkpoint has its own head "
                         "and weights")
    if not args.checkpoint and (args.depth is not None or args.relu_plus is not None):
        raise ValueError("--depth and --relu-plus go with a CVNet --checkpoint; an ImageNet --backbone has neither "
                         "(a ResNet's depth is in its name: resnet50, resnet101)")
    return args.settings["DescriptorSettings"]


def _check_trained_flags(args, backbone_name: str) -> None:
    """Refuse --depth / --relu-plus that a checkpoint written by `sglib train` cannot honour."""
    from ..models.trained import CVNET_BACKBONES
    depth = CVNET_BACKBONES.get(backbone_name)
    if args.depth is not None and args.depth != depth:
        raise ValueError(f"--depth {args.depth}: {args.checkpoint} is a trained {backbone_name}, whose architecture "
                         "is recorded in the checkpoint: leave out --depth")
    if args.relu_plus is not None and depth is None:
        raise ValueError(f"--relu-plus: {args.checkpoint} is a trained {backbone_name}, which has no ReLU+ (a CVNet "
                         "ResNet setting): leave out --relu-plus")


def load_model(args, device="cpu"):
    """The network the model flags name, on ``device``."""
    from ..models import load_backbone, load_cvnet, load_trained
    from ..models.trained import read_training_file
    if args.checkpoint:
        blob = read_training_file(args.checkpoint)
        if blob is not None:
            _check_trained_flags(args, blob["backbone"])
            return load_trained(args.checkpoint, device=device,
                                relu_plus="recorded" if args.relu_plus is None else RELU_PLUS[args.relu_plus])
        return load_cvnet(args.checkpoint, depth=args.depth or 50, relu_plus=RELU_PLUS[args.relu_plus or "on"],
                          device=device)
    head = None
    if args.whitening:
        from ..models.whitening import Whitening
        head = Whitening.load(args.whitening)
    return load_backbone(args.backbone, weights=args.weights, device=device, head=head)
