"""Registry of the shared fixture modules (each helper module defines its own fixtures), and the
one autouse fixture every test gets."""

import logging
from collections.abc import Iterator

import pytest

from tests.helpers.collector_fixtures import *  # noqa: F403
from tests.helpers.receiver_fixtures import *  # noqa: F403


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """A command run in process (`collector serve` through `cli.main`) configures the root logger
    with the stream it saw, which is the test's captured stderr; closed after the test, it would
    break the logging of a collector served in a thread by a later test of the same worker."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
