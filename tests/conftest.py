"""Fixtures shared by the whole suite live in tests/helpers; they are registered here."""

pytest_plugins = ["tests.helpers.fixtures"]
