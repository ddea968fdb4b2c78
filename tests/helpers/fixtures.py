"""Registry of the shared fixture modules (each helper module defines its own fixtures)."""

from tests.helpers.collector_fixtures import *  # noqa: F403
from tests.helpers.receiver_fixtures import *  # noqa: F403
