"""The extraction engines a test can run on: stdlib always, hyperscan where it is installed."""

from __future__ import annotations

import importlib.util

import pytest

HAVE_HYPERSCAN = importlib.util.find_spec("hyperscan") is not None
needs_hyperscan = pytest.mark.skipif(not HAVE_HYPERSCAN, reason="hyperscan not installed")
ENGINES = ["stdlib", pytest.param("hyperscan", marks=needs_hyperscan)]
