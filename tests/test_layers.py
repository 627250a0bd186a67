"""The import contracts written in pyproject.toml ([tool.importlinter]) hold: the layers, and
each command package's internals used only inside it. import-linter reads every import of the
package, those inside functions too."""

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def lint_imports(config: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lint-imports")
    return subprocess.run([str(exe if exe.exists() else shutil.which("lint-imports")), "--no-cache", str(config)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_the_package_keeps_its_import_contracts():
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    assert len(contracts[0]["layers"]) <= 10
    assert {c["type"] for c in contracts} == {"layers", "protected"}
    res = lint_imports(ROOT / "pyproject.toml")
    assert res.returncode == 0 and f"{len(contracts)} kept, 0 broken" in res.stdout, res.stdout[-3000:]


def test_broken_contracts_are_caught(tmp_path):
    """The check can fail: with storage put above the report (which writes through it), the
    report's import runs up a layer; with nightly's own module protected, the CLI's import of it
    is caught."""
    config = tmp_path / "broken.toml"
    config.write_text('[tool.importlinter]\nroot_package = "scanner"\n\n[[tool.importlinter.contracts]]\n'
                      'id = "l"\nname = "upside down"\ntype = "layers"\nlayers = ["scanner.storage", "scanner.report"]\n'
                      '\n[[tool.importlinter.contracts]]\nid = "p"\nname = "nightly kept in"\ntype = "protected"\n'
                      'protected_modules = ["scanner.nightly"]\nallowed_importers = ["scanner.nightly"]\n')
    res = lint_imports(config)
    assert res.returncode == 1 and "0 kept, 2 broken" in res.stdout, res.stdout
    assert "scanner.report is not allowed to import scanner.storage" in res.stdout, res.stdout
    assert "scanner.cli" in res.stdout.split("nightly kept in")[-1], res.stdout


# Files that may build local paths: the storage layer and input listing, the fine-tune's local
# working folder, model folders read by from_pretrained, the demo's and tests' model training,
# the compiled tables' cache. Every other module writes its outputs through scanner.storage, so
# that each command's --out may be a URI.
PATH_BUILDERS = {"storage.py", "inputs.py", "calibrate/finetune.py", "scoring/factory.py", "scoring/lm_head.py",
                 "scoring/vllm.py", "toy.py", "unicode_text.py", "cli.py"}


def path_joins(source: str) -> list[int]:
    """Lines that join local paths: `x / "name"`, os.path.join(...), x.joinpath(...)."""
    import ast

    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and any(
                isinstance(side, (ast.Constant, ast.JoinedStr)) and not isinstance(getattr(side, "value", ""), (int, float))
                for side in (node.left, node.right)):
            lines.append(node.lineno)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("join", "joinpath") \
                and ast.unparse(node.func.value) in ("os.path", "posixpath") or (
                isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "joinpath"):
            lines.append(node.lineno)
    return lines


def test_only_the_path_owners_build_local_paths():
    package = ROOT / "scanner"
    found = {}
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package).as_posix()
        if rel not in PATH_BUILDERS and (lines := path_joins(path.read_text())):
            found[rel] = lines
    assert found == {}, found
    assert path_joins('out = Path(o) / "report.html"\n') == [1]  # the check finds a join
    assert path_joins("import os\nos.path.join(a, 'b')\n") == [2]
