"""SQLite schema. Times are INTEGER microseconds since the epoch (UTC): exact and compact.

Tables keyed by text are WITHOUT ROWID: the primary key is the table, so an upsert touches one
B-tree instead of two, which is most of the ingest cost.
"""

from __future__ import annotations

from remote_uploader.collector.storage.migrations import Migration

MIGRATIONS: tuple[Migration, ...] = (
    (
        1,
        (
            """CREATE TABLE tokens (
                name TEXT PRIMARY KEY,
                token_hash TEXT NOT NULL UNIQUE,
                role TEXT NOT NULL CHECK (role IN ('agent', 'read')),
                created_at INTEGER NOT NULL
            )""",
            """CREATE TABLE batches (
                agent TEXT NOT NULL,
                batch_id TEXT NOT NULL,
                received_at INTEGER NOT NULL,
                records INTEGER NOT NULL,
                PRIMARY KEY (agent, batch_id)
            ) WITHOUT ROWID""",
            "CREATE INDEX batches_received_at ON batches (received_at)",
            """CREATE TABLE ips (
                ip TEXT PRIMARY KEY,
                ipkey BLOB NOT NULL,
                family INTEGER NOT NULL,
                total INTEGER NOT NULL,
                first_seen INTEGER NOT NULL,
                last_seen INTEGER NOT NULL
            ) WITHOUT ROWID""",
            """CREATE TABLE ip_agents (
                ip TEXT NOT NULL,
                agent TEXT NOT NULL,
                total INTEGER NOT NULL,
                first_seen INTEGER NOT NULL,
                last_seen INTEGER NOT NULL,
                PRIMARY KEY (ip, agent)
            ) WITHOUT ROWID""",
            "CREATE INDEX ip_agents_agent ON ip_agents (agent, ip)",
            """CREATE TABLE agents (
                name TEXT PRIMARY KEY,
                first_seen INTEGER NOT NULL,
                last_seen INTEGER NOT NULL,
                batches INTEGER NOT NULL,
                duplicates INTEGER NOT NULL,
                records INTEGER NOT NULL,
                last_batch_id TEXT NOT NULL,
                last_batch_sent_at INTEGER NOT NULL
            )""",
        ),
    ),
    (
        2,
        (
            # One row per producer (agent state directory): see storage/producers.py.
            """CREATE TABLE producers (
                producer TEXT PRIMARY KEY,
                agent TEXT NOT NULL,
                watermark INTEGER NOT NULL,
                pending TEXT NOT NULL,
                updated_at INTEGER NOT NULL
            )""",
        ),
    ),
)
