"""The layers import downwards only; a planted wrong import fails the check.

Layers, bottom to top (a module may import its own layer and the layers below it):

1. ``library``: ``seqanom_core`` without ``seqanom_core.federation`` (the detector library);
2. ``federation``: ``seqanom_core.federation`` (the federation's plain logic);
3. ``client`` and ``server``: the Flower adapters, side by side (neither imports the other);
4. ``simulation``: the researcher's harness (``simulation`` without ``simulation.cli``);
5. ``cli``: ``simulation.cli``, the ``seqanom`` console command.

``library`` and ``federation`` never import Flower. Every import counts: at the top of a module,
inside a function, and ``importlib.import_module("...")`` with a literal name.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("seqanom_core", "client", "server", "simulation")

# layer -> the layers it may import (its own included)
ALLOWED: dict[str, set[str]] = {
    "library": {"library"},
    "federation": {"library", "federation"},
    "client": {"library", "federation", "client"},
    "server": {"library", "federation", "server"},
    "simulation": {"library", "federation", "client", "server", "simulation"},
    "cli": {"library", "federation", "client", "server", "simulation", "cli"},
}
NO_FLOWER = {"library", "federation"}


def layer_of(module: str) -> str | None:
    """The layer of a dotted module name of this project (None: not ours)."""
    top = module.split(".")[0]
    if top == "seqanom_core":
        return "federation" if module.startswith("seqanom_core.federation") else "library"
    if top == "simulation":
        return "cli" if module == "simulation.cli" or module.startswith("simulation.cli.") else "simulation"
    return top if top in ("client", "server") else None


def module_name(path: Path, root: Path) -> str:
    """Dotted module name of a source file under ``root``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(tree: ast.AST, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``tree``, relative ones resolved."""
    found: list[tuple[int, str]] = []
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((node.lineno, name))
            # `from seqanom_core import federation` imports the subpackage
            found += [(node.lineno, f"{name}.{alias.name}") for alias in node.names
                      if layer_of(f"{name}.{alias.name}") != layer_of(name)]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.append((node.lineno, node.args[0].value))
    return found


def boundary_violations(root: Path) -> list[str]:
    """Every import in the packages under ``root`` that breaks a layer rule, as 'file:line: why'."""
    problems: list[str] = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            module = module_name(path, root)
            layer = layer_of(module)
            assert layer is not None, module
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for line, name in imported_modules(tree, module, path.name == "__init__.py"):
                where = f"{path.relative_to(root)}:{line}"
                target = layer_of(name)
                if target is not None and target not in ALLOWED[layer]:
                    problems.append(f"{where}: {layer} imports {name} ({target})")
                if layer in NO_FLOWER and name.split(".")[0] == "flwr":
                    problems.append(f"{where}: {layer} imports Flower ({name})")
    return problems


def test_layers_import_downwards_only():
    assert boundary_violations(ROOT) == []


@pytest.mark.parametrize(("file", "line", "expected"), [
    ("seqanom_core/detector.py", "from simulation.cli import main", "library imports simulation.cli (cli)"),
    ("seqanom_core/metrics.py", "    import flwr.app", "library imports Flower (flwr.app)"),
    ("seqanom_core/scoring.py", "from seqanom_core.federation import message_keys",
     "library imports seqanom_core.federation (federation)"),
    ("seqanom_core/federation/records.py", "from flwr.app import Array", "federation imports Flower"),
    ("client/app.py", "from server.records import to_array_record", "client imports server.records"),
    ("server/app.py", "import client.secagg", "server imports client.secagg"),
    ("server/app.py", "x = importlib.import_module('client.app')", "server imports client.app"),
    ("simulation/run.py", "from simulation.cli.inputs import read_labels",
     "simulation imports simulation.cli.inputs (cli)"),
    ("seqanom_core/federation/site_round.py", "from . import records\nfrom .. import metrics", None),
])
def test_a_planted_wrong_import_is_caught(tmp_path, file, line, expected):
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / file
    target.write_text(target.read_text(encoding="utf-8") + "\n\ndef _planted():\n    "
                      + line.strip().replace("\n", "\n    ") + "\n", encoding="utf-8")
    problems = boundary_violations(tmp_path)
    if expected is None:  # relative imports within the rules are fine
        assert problems == []
    else:
        assert len(problems) == 1 and expected in problems[0], problems
        assert problems[0].startswith(f"{file}:")


MAX_LINES = 400
REASON = "Over 400 lines:"


def oversized_modules(root: Path) -> list[str]:
    """Modules longer than MAX_LINES whose docstring does not say why (``Over 400 lines: ...``)."""
    found = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            if text.count("\n") <= MAX_LINES:
                continue
            doc = ast.get_docstring(ast.parse(text)) or ""
            if REASON not in doc or not doc.split(REASON, 1)[1].strip():
                found.append(f"{path.relative_to(root)}: {text.count(chr(10))} lines")
    return found


def test_no_module_is_oversized_without_a_reason(tmp_path):
    assert oversized_modules(ROOT) == []
    (tmp_path / "seqanom_core").mkdir()
    (tmp_path / "seqanom_core" / "big.py").write_text('"""A module."""\n' + "x = 1\n" * MAX_LINES)
    assert oversized_modules(tmp_path) == ["seqanom_core/big.py: 401 lines"]
