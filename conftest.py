"""Doctest collection (``pytest --doctest-modules sglib`` in ``make test``): a docstring whose every example
is ``# doctest: +SKIP`` shows usage on what a fresh clone lacks (a download, a trained run, the revisited
datasets); it is not a test, so it is deselected rather than reported as skipped."""
import doctest

from _pytest.doctest import DoctestItem


def pytest_collection_modifyitems(config, items):
    usage_only = [item for item in items if isinstance(item, DoctestItem) and item.dtest.examples and
                  all(ex.options.get(doctest.SKIP) for ex in item.dtest.examples)]
    if usage_only:
        config.hook.pytest_deselected(items=usage_only)
        items[:] = [item for item in items if item not in usage_only]
