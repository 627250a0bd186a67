"""The built-in scores, one module per attack; importing this package registers them. The
modules below come first, in this order (the feature columns' order); any other module of the
package is found and registered after them, in name order."""

import importlib
import pkgutil

FIRST = ("loss", "zlib_ratio", "min_k", "min_k_pp", "neighborhood")

for _name in FIRST + tuple(sorted({m.name for m in pkgutil.iter_modules(__path__)} - set(FIRST))):
    importlib.import_module(f"{__name__}.{_name}")
