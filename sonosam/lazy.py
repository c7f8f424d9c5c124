"""Package attributes loaded from their home modules on first use (PEP 562): importing a package for its
command line or its torch-free parts then does not import the heavy modules (torch) behind the rest."""

from __future__ import annotations

import importlib
import sys


def lazy_attributes(package: str, homes: dict[str, str]):
    """`__getattr__` and `__dir__` for `package`, whose names in `homes` live in the submodule named there."""

    def __getattr__(name):
        if name in homes:
            return getattr(importlib.import_module(f".{homes[name]}", package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(vars(sys.modules[package])) | set(homes))

    return __getattr__, __dir__
