"""Settings fields that carry their own command-line help: ``setting(default, help, ...)``.

The settings dataclasses (:class:`sglib.method.descriptors.DescriptorSettings`,
:class:`sglib.evaluate.retrieval.RerankSettings`, :class:`sglib.training.loop.TrainConfig`) declare
each field with :func:`setting`; the command line (:mod:`sglib.cli.flags`) makes every field a flag
from it. So a setting's name, default and help are written once, beside the range check in the
dataclass's ``__post_init__``, which stays the only check.

    >>> import dataclasses
    >>> @dataclasses.dataclass(frozen=True)
    ... class Example:
    ...     k: int = setting(9, "neighbours")
    >>> dataclasses.fields(Example)[0].metadata["help"]
    'neighbours'
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable


def setting(default: Any, help: str, *, parse: Callable[[str], Any] | None = None, flag: str | None = None,
            metavar: str | None = None):
    """A dataclass field whose metadata the CLI reads.

    Args:
        default: the field's default (immutable values only: the dataclasses are frozen).
        help: one line for ``--help``.
        parse: text -> value for a flag that is not a plain int, float, str or bool (``--scales 3``,
            ``--gem-p learned``); it converts only, ranges are ``__post_init__``'s.
        flag: the flag's name when it is not ``--`` + the field name with dashes.
        metavar: how ``--help`` shows the value.
    """
    return dataclasses.field(default=default, metadata={"help": help, "parse": parse, "flag": flag,
                                                        "metavar": metavar})
