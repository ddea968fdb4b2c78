"""The extraction engines a test can run on: stdlib always, native and hyperscan where installed."""

from __future__ import annotations

import importlib.util

import pytest

HAVE_HYPERSCAN = importlib.util.find_spec("hyperscan") is not None
needs_hyperscan = pytest.mark.skipif(not HAVE_HYPERSCAN, reason="hyperscan not installed")
# The native core is built by `pip install .` wherever a C compiler exists (setup.py); CI builds it.
HAVE_NATIVE = importlib.util.find_spec("remote_uploader.agent._native") is not None
needs_native = pytest.mark.skipif(not HAVE_NATIVE, reason="the native extraction core is not built")
ENGINES = ["stdlib", pytest.param("native", marks=needs_native), pytest.param("hyperscan", marks=needs_hyperscan)]
