"""tools/mutate.py's list of planted bugs stays current: every snippet is found exactly once in its file,
every test it names exists, and every package of sglib/ has mutations (``make mutate`` runs them)."""
import importlib.util
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _mutate():
    spec = importlib.util.spec_from_file_location("mutate", ROOT / "tools" / "mutate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("mutate", module)     # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_no_mutation_is_stale():
    mutate = _mutate()
    assert mutate.stale() == [], "update tools/mutate.py: the code these mutations target has moved"


def test_every_package_has_mutations_and_no_mutation_is_a_no_op():
    mutations = _mutate().MUTATIONS
    assert len(mutations) >= 60
    packages = {p.name for p in (ROOT / "sglib").iterdir() if (p / "__init__.py").is_file()}
    covered = {mu.path.split("/")[1] for mu in mutations}
    assert packages <= covered, f"packages without mutations: {sorted(packages - covered)}"
    assert all(mu.old != mu.new and mu.tests for mu in mutations)
