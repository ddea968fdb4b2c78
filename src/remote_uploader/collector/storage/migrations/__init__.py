"""Versioned schema migrations, one list per backend.

Each entry is (version, statements). A database records the newest version applied in its
`schema_version` table; `migrate()` applies the missing entries in order, each version in its own
transaction, and refuses a database whose version is newer than the last entry here (it was
written by a newer collector). Never edit an entry that has shipped: append a new one.
"""

from __future__ import annotations

Migration = tuple[int, tuple[str, ...]]
