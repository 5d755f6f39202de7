"""The transform library. Importing this package registers every transform module in it."""

import importlib
import pkgutil

from porter.transforms._base import (  # noqa: F401  (re-exported)
    REGISTRY,
    Change,
    Context,
    Example,
    Finding,
    Outcome,
    PythonTransform,
    Rewriter,
    Safety,
    TextTransform,
    Transform,
    all_transforms,
)

for _info in pkgutil.iter_modules(__path__):
    if not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")
