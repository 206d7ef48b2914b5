"""Package namespaces that import their public names on first use.

`lnpt.shared`, `lnpt.cloud` and `lnpt.edge` re-export their public API from the modules that own it,
but importing a package must stay cheap: `lnpt --help` imports every command module (and so every
package `__init__`), and an edge device must not pay for what it does not call. PEP 562's module
`__getattr__` imports the owning module only when a name is first used.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_exports(package: str, owners: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for `package`, where `owners` maps each public name to its module."""

    def __getattr__(name: str) -> Any:
        if name not in owners:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(owners[name]), name)

    def __dir__() -> list[str]:
        return sorted(owners)

    return __getattr__, __dir__
