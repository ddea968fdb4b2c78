"""PostgreSQL schema, the same as SQLite's: times are BIGINT microseconds since the epoch (UTC),
so both backends store and compare exactly the same numbers (`to_timestamp(last_seen / 1e6)`
shows one). Addresses use COLLATE "C" so that text order, and so cursor pagination, is the same
as on SQLite whatever the database locale is.
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
                created_at BIGINT NOT NULL
            )""",
            """CREATE TABLE batches (
                agent TEXT NOT NULL,
                batch_id TEXT NOT NULL,
                received_at BIGINT NOT NULL,
                records INTEGER NOT NULL,
                PRIMARY KEY (agent, batch_id)
            )""",
            "CREATE INDEX batches_received_at ON batches (received_at)",
            """CREATE TABLE ips (
                ip TEXT COLLATE "C" PRIMARY KEY,
                ipkey BYTEA NOT NULL,
                family SMALLINT NOT NULL,
                total BIGINT NOT NULL,
                first_seen BIGINT NOT NULL,
                last_seen BIGINT NOT NULL
            )""",
            """CREATE TABLE ip_agents (
                ip TEXT COLLATE "C" NOT NULL,
                agent TEXT NOT NULL,
                total BIGINT NOT NULL,
                first_seen BIGINT NOT NULL,
                last_seen BIGINT NOT NULL,
                PRIMARY KEY (ip, agent)
            )""",
            "CREATE INDEX ip_agents_agent ON ip_agents (agent, ip)",
            """CREATE TABLE agents (
                name TEXT PRIMARY KEY,
                first_seen BIGINT NOT NULL,
                last_seen BIGINT NOT NULL,
                batches BIGINT NOT NULL,
                duplicates BIGINT NOT NULL,
                records BIGINT NOT NULL,
                last_batch_id TEXT NOT NULL,
                last_batch_sent_at BIGINT NOT NULL
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
                watermark BIGINT NOT NULL,
                pending TEXT NOT NULL,
                updated_at BIGINT NOT NULL
            )""",
        ),
    ),
)
