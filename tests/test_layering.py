"""The package's layers only point down, and every module has one name that is a file on disk.

``LAYERS`` is the allowed order, lowest first: a module may import its own package and any package
of a lower layer, never a package of its own layer or a higher one. The check reads the source
(every ``import`` statement, those inside functions included), so it needs no import to run.
"""
import ast
import importlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

LAYERS = (
    {"_checks", "_settings", "runtime"},
    {"search", "method", "timing"},
    {"data"},
    {"models"},
    {"evaluate", "rerankers", "local"},
    {"scale", "training"},
    {"bundled"},
    {"experiments"},
    {"demo"},
    {"cli"},
    {"__main__"},
)
# re-exports under the names ../shared/spec/api.md gives; for users, never imported by the library
CONTRACT_NAMES = {"pooling": "method.pooling", "rerank": "method.rerank"}


def _top(module: str) -> str:
    """``sglib.method.pooling`` -> ``method``; ``sglib`` -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def import_edges(package_dir: Path) -> list[tuple[str, str, str]]:
    """(importing top-level name, imported top-level name, ``file:line``) for every import between two
    different top-level modules or packages of the package at ``package_dir``."""
    name = package_dir.name
    edges = []
    for path in sorted(package_dir.rglob("*.py")):
        parts = (name, *path.relative_to(package_dir).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        module = ".".join(parts[:-1] if is_package else parts)
        package = module if is_package else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                # `from sglib import search` / `from .. import search` import the submodule `search`
                targets = [f"{source}.{a.name}" for a in node.names] if source == name else [source]
            else:
                continue
            for target in targets:
                if target.split(".")[0] != name:
                    continue
                a, b = _top(module), _top(target)
                if a and b and a != b:
                    edges.append((a, b, f"{path.relative_to(package_dir.parent)}:{node.lineno}"))
    return edges


def layering_violations(edges, layers=LAYERS, contract_names=CONTRACT_NAMES) -> list[str]:
    """One line per import that climbs, crosses within a layer, or goes through a contract name."""
    level = {name: i for i, group in enumerate(layers) for name in group}
    problems = []
    for a, b, where in edges:
        if b in contract_names:
            problems.append(f"{where}: {a} imports sglib.{b}, a re-export for users: import "
                            f"sglib.{contract_names[b]}")
        elif a in contract_names:
            continue   # the re-export files import what they re-export
        elif a not in level or b not in level:
            problems.append(f"{where}: {a} -> {b}: add {sorted({a, b} - set(level))} to LAYERS in "
                            "tests/test_layering.py")
        elif level[b] >= level[a]:
            how = "a package of the same layer" if level[b] == level[a] else "a higher layer"
            problems.append(f"{where}: {a} (layer {level[a]}) imports {b}, {how} (layer {level[b]}): move the "
                            "shared code down, or pass it in as an argument")
    return problems


def test_imports_only_point_down():
    edges = import_edges(ROOT / "sglib")
    assert len(edges) > 50   # the walk sees the package's imports
    problems = layering_violations(edges)
    assert not problems, "imports against the layering:\n" + "\n".join(problems)


def test_every_top_level_module_has_a_layer():
    names = {p.stem if p.is_file() else p.name for p in (ROOT / "sglib").iterdir()
             if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()}
    placed = set().union(*LAYERS) | set(CONTRACT_NAMES)
    assert names == placed, f"not in LAYERS: {sorted(names - placed)}; gone from sglib/: {sorted(placed - names)}"


def _synthetic_package(tmp_path: Path, files: dict) -> Path:
    for rel, text in files.items():
        path = tmp_path / "sglib" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path / "sglib"


def test_the_check_fails_on_an_import_that_climbs(tmp_path):
    pkg = _synthetic_package(tmp_path, {
        "__init__.py": "",
        "method/__init__.py": "",
        "method/pooling.py": "def gem(x):\n    from ..experiments.tables import ROWS\n    return ROWS\n",
        "experiments/__init__.py": "",
        "experiments/tables.py": "from ..method.pooling import gem\nROWS = []\n",
        "scale/extract.py": "from sglib import search\n",
        "search.py": "",
        "rerankers/graph.py": "from .. import rerank\n",
        "rerank.py": "from .method.rerank import superglobal\n",
    })
    problems = layering_violations(import_edges(pkg))
    assert len(problems) == 2, problems
    assert "sglib/method/pooling.py:2: method (layer 1) imports experiments, a higher layer (layer 7)" in problems[0]
    assert "rerankers imports sglib.rerank, a re-export for users: import sglib.method.rerank" in problems[1]


def test_the_check_fails_on_an_import_between_peers(tmp_path):
    pkg = _synthetic_package(tmp_path, {"__init__.py": "", "evaluate/streaming.py": "import sglib.rerankers.graph\n",
                                        "rerankers/__init__.py": ""})
    assert ["same layer" in p for p in layering_violations(import_edges(pkg))] == [True]


@pytest.mark.parametrize("name,real", [("pooling", "method.pooling"), ("rerank", "method.rerank"),
                                       ("evaluate", None), ("search", None)])
def test_contract_names_are_files_on_disk(name, real):
    spec = importlib.util.find_spec(f"sglib.{name}")
    origin = Path(spec.origin)
    assert origin.is_file() and origin.relative_to(ROOT / "sglib").parts[0] in (f"{name}.py", name)
    if real is not None:   # a re-export: the very functions of the method module
        contract, source = importlib.import_module(f"sglib.{name}"), importlib.import_module(f"sglib.{real}")
        assert contract.__all__ and all(getattr(contract, f) is getattr(source, f) for f in contract.__all__)


def test_every_loaded_module_is_the_file_its_name_says():
    """No module under two names: each ``sglib.*`` entry of sys.modules was loaded from its own file, also
    after a reload of the package."""
    import sglib
    importlib.reload(sglib)
    for name in ("sglib.pooling", "sglib.rerank", "sglib.evaluate.streaming", "sglib.search", "sglib.cli.flags",
                 "sglib.scale.shards", "sglib.bundled.whitening"):
        importlib.import_module(name)
    loaded = {name: m for name, m in sys.modules.items() if name == "sglib" or name.startswith("sglib.")}
    for name, module in loaded.items():
        assert module.__name__ == module.__spec__.name == name, (name, module.__name__)
        path = Path(module.__file__).resolve().relative_to(ROOT)
        expected = Path(*name.split("."))
        assert path in (expected.with_suffix(".py"), expected / "__init__.py"), (name, path)


@pytest.mark.parametrize("value,expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_import_sets_the_openmp_wait_policy_only_when_the_user_did_not(value, expected):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if value is not None:
        env["OMP_WAIT_POLICY"] = value
    out = subprocess.run([sys.executable, "-c", "import os, sglib; print(os.environ['OMP_WAIT_POLICY'])"], env=env,
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    assert out == expected
