"""What a rendered notebook says about itself: the banner at the top of each page.

A notebook runs at CI size by default (small builds, short training) and at full size with ``SGLIB_FULL=1``; the
README's figures come from commands that write ``results/*``. The banner says which size the page ran at and
where the full-size evidence it shows comes from, so no reader takes a small run for the README's numbers.

Example::

    display(page_banner(FULL, "python -m sglib stability", ["results/stability.json"]))
"""
from __future__ import annotations

from pathlib import Path


def banner_text(full: bool, rerun: str, sources: list, root=".") -> str:
    """The banner as Markdown.

    Args:
        full: whether this run used the full-size parameters (``SGLIB_FULL=1``).
        rerun: the command that writes the full-size results this page shows beside its own run.
        sources: the committed results files the page reads (paths relative to the repository root); each
            must exist under ``root``.

    Raises:
        ValueError: a listed results file is missing (the page would show evidence that is not there).
    """
    missing = [s for s in sources if not (Path(root) / s).is_file()]
    if missing:
        raise ValueError(f"page banner: results file(s) {missing} not found under {Path(root).resolve().name}/: "
                         f"run `{rerun}` to write them")
    size = ("**Full-size run** (`SGLIB_FULL=1`)." if full else
            "**This page is a CI-size run**: small builds and short runs, so its numbers are noisier than the "
            "README's and can differ from them. `SGLIB_FULL=1` runs it at full size.")
    if not sources:
        return size + f" Re-run: `{rerun}`."
    files = ", ".join(f"`{s}`" for s in sources)
    return (f"{size} Where this page shows **committed full-size results**, they are read from {files}, "
            f"written by `{rerun}` (the README's tables come from the same files).")


def page_banner(full: bool, rerun: str, sources: list, root=".."):
    """:func:`banner_text` as an ``IPython.display.Markdown`` (``root``: the repository, seen from notebooks/)."""
    from IPython.display import Markdown
    return Markdown("> " + banner_text(full, rerun, sources, root))


__all__ = ["banner_text", "page_banner"]
