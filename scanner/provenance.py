"""What produced a result: package versions, for manifests and metrics.json."""

from __future__ import annotations

import sys
from importlib import metadata

PACKAGES = ("scanner", "ray", "torch", "transformers", "scikit-learn", "numpy", "polars", "pyarrow")


def package_versions(packages=PACKAGES) -> dict:
    out = {"python": sys.version.split()[0]}
    for pkg in packages:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out
