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
