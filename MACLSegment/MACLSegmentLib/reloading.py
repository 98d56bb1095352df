"""Reload and Test: Slicer reloads ``MACLSegment.py`` only; this reloads the helper package beside it too."""

import importlib
import sys
from typing import List


def reloadPackage(name: str = "MACLSegmentLib") -> List[str]:
    """Forget ``name`` and its submodules, then import again those that were loaded (each import pulls in what
    it needs, so the order is right). Returns the modules imported again."""
    loaded = sorted(module for module in sys.modules if module == name or module.startswith(name + "."))
    for module in loaded:
        del sys.modules[module]
    importlib.invalidate_caches()
    for module in loaded:
        if module not in sys.modules:
            importlib.import_module(module)
    return loaded
