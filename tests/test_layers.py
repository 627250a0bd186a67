"""The import layers written in pyproject.toml ([tool.importlinter]) hold: import-linter reads
every import of the package, those inside functions too."""

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


def test_the_package_keeps_its_import_layers():
    layers = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]["layers"]
    assert len(layers) <= 10
    res = lint_imports(ROOT / "pyproject.toml")
    assert res.returncode == 0 and "1 kept, 0 broken" in res.stdout, res.stdout[-3000:]


def test_a_layer_that_imports_one_above_it_is_caught(tmp_path):
    """The check can fail: with storage put above the report (which writes through it), the
    report's import of storage runs up a layer."""
    config = tmp_path / "upside_down.toml"
    config.write_text('[tool.importlinter]\nroot_package = "scanner"\n\n[[tool.importlinter.contracts]]\n'
                      'id = "l"\nname = "upside down"\ntype = "layers"\nlayers = ["scanner.storage", "scanner.report"]\n')
    res = lint_imports(config)
    assert res.returncode == 1 and "scanner.report is not allowed to import scanner.storage" in res.stdout, res.stdout
