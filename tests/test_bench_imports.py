"""Every bench script still names what exists: bench/baseline_throughput.py once imported a CLI
function that had been removed, and the README's figure could not be reproduced. The scripts
import most of scanner inside their functions, so importing them is not enough: every
`from scanner... import name` anywhere in them, and every `module.name` read from a scanner module
they imported, must resolve."""

import ast
import importlib
from pathlib import Path

import pytest

BENCH = sorted((Path(__file__).resolve().parents[1] / "bench").glob("*.py"))


def _module(name: str):
    """The scanner module, or None where it needs an optional package this venv lacks (vllm)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name and not e.name.startswith("scanner"):
            return None
        raise


def _unresolved(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    bound: dict[str, object] = {}  # local name -> scanner module
    missing = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "scanner":
            module = _module(node.module)
            if module is None:
                continue
            for alias in node.names:
                value = getattr(module, alias.name, None)
                if value is None:  # a submodule not imported yet
                    try:
                        value = _module(f"{node.module}.{alias.name}")
                    except ModuleNotFoundError:
                        value = None
                if value is None:
                    missing.append(f"{path.name}:{node.lineno}: from {node.module} import {alias.name}")
                elif type(value).__name__ == "module":
                    bound[alias.asname or alias.name] = value
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "scanner" and alias.asname:
                    bound[alias.asname] = _module(alias.name)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and bound.get(node.value.id):
            if not hasattr(bound[node.value.id], node.attr):
                missing.append(f"{path.name}:{node.lineno}: {node.value.id}.{node.attr}")
    return missing


@pytest.mark.parametrize("path", BENCH, ids=[p.name for p in BENCH])
def test_bench_script_names_only_what_exists(path):
    assert not _unresolved(path)


def test_the_check_catches_a_removed_name(tmp_path):
    stale = tmp_path / "stale.py"
    stale.write_text("def main():\n    from scanner.cli import cmd_baseline_old\n    from scanner.scoring import stats\n"
                     "    return stats.min_k_names\n")
    assert _unresolved(stale) == ["stale.py:2: from scanner.cli import cmd_baseline_old", "stale.py:4: stats.min_k_names"]
