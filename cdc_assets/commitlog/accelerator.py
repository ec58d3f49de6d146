"""The optional C accelerator (``_mutation_accel.c``): which code decodes and frames entries.

``COMPILED`` is the extension module, or None where it did not build. ``accelerator()`` is what to use
now: None also when ``CDC_ASSETS_PURE_PYTHON=1`` asks for the pure-Python code (differential tests,
benchmarks). It is read at each call, so a test can switch it case by case.
"""

from __future__ import annotations

import os
from types import ModuleType

try:
    from cdc_assets.commitlog import _mutation_accel as COMPILED
except ImportError:  # no compiler or Python headers at install time: the pure-Python code does all the work
    COMPILED = None

PURE_PYTHON_ENV = "CDC_ASSETS_PURE_PYTHON"


def accelerator() -> ModuleType | None:
    return None if os.environ.get(PURE_PYTHON_ENV) == "1" else COMPILED
