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
            # Time buckets (model.py): bucket = start in seconds since the epoch; agent and source
            # are label ids. Address first: a window for one address is one range of the key.
            """CREATE TABLE counts (
                ipkey BLOB NOT NULL,
                bucket INTEGER NOT NULL,
                agent INTEGER NOT NULL,
                source INTEGER NOT NULL,
                total INTEGER NOT NULL,
                PRIMARY KEY (ipkey, bucket, agent, source)
            ) WITHOUT ROWID""",
            """CREATE TABLE counts_hour (
                ipkey BLOB NOT NULL,
                bucket INTEGER NOT NULL,
                agent INTEGER NOT NULL,
                source INTEGER NOT NULL,
                total INTEGER NOT NULL,
                PRIMARY KEY (ipkey, bucket, agent, source)
            ) WITHOUT ROWID""",
            """CREATE TABLE counts_day (
                ipkey BLOB NOT NULL,
                bucket INTEGER NOT NULL,
                agent INTEGER NOT NULL,
                source INTEGER NOT NULL,
                total INTEGER NOT NULL,
                PRIMARY KEY (ipkey, bucket, agent, source)
            ) WITHOUT ROWID""",
            """CREATE TABLE labels (
                id INTEGER PRIMARY KEY,
                kind TEXT NOT NULL CHECK (kind IN ('agent', 'source')),
                name TEXT NOT NULL,
                UNIQUE (kind, name)
            )""",
            # One row per sequence; decision writers update it first, so they take its row lock
            # in turn and sequence numbers are committed in order (model.py).
            """CREATE TABLE sequences (
                name TEXT PRIMARY KEY,
                value INTEGER NOT NULL
            )""",
            "INSERT INTO sequences (name, value) VALUES ('decisions', 0)",
            # value: canonical address or CIDR; (family, lo, hi): its first and last packed
            # address, for "which decisions hold this address". details: the rule's JSON.
            """CREATE TABLE decisions (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                value TEXT NOT NULL,
                scope TEXT NOT NULL CHECK (scope IN ('Ip', 'Range')),
                family SMALLINT NOT NULL,
                lo BLOB NOT NULL,
                hi BLOB NOT NULL,
                type TEXT NOT NULL,
                origin TEXT NOT NULL,
                scenario TEXT NOT NULL,
                reason TEXT NOT NULL,
                details TEXT NOT NULL,
                created_at INTEGER NOT NULL,
                until INTEGER NOT NULL,
                state TEXT NOT NULL CHECK (state IN ('active', 'deleted', 'expired')),
                ended_at INTEGER,
                created_seq INTEGER NOT NULL,
                ended_seq INTEGER
            )""",
            "CREATE INDEX decisions_created_seq ON decisions (created_seq)",
            "CREATE INDEX decisions_ended_seq ON decisions (ended_seq)",
            "CREATE INDEX decisions_value ON decisions (value, created_at)",
            "CREATE INDEX decisions_active_until ON decisions (until) WHERE state = 'active'",
            "CREATE INDEX decisions_active_range ON decisions (family, lo) WHERE state = 'active'",
            """CREATE TABLE decision_evidence (
                decision_id INTEGER NOT NULL,
                ip TEXT NOT NULL,
                total INTEGER NOT NULL,
                first_bucket INTEGER NOT NULL,
                last_bucket INTEGER NOT NULL,
                PRIMARY KEY (decision_id, ip)
            ) WITHOUT ROWID""",
        ),
    ),
    # Bouncer keys (CrowdSec-compatible decision stream, collector/routers/lapi.py): only the hash of
    # a key is kept; last_seq and last_pull_at are where the key's next delta starts (NULL: it
    # never pulled), written only after a pull was answered in full.
    (
        3,
        (
            """CREATE TABLE bouncers (
                name TEXT PRIMARY KEY,
                key_hash TEXT NOT NULL UNIQUE,
                created_at INTEGER NOT NULL,
                last_seq INTEGER,
                last_pull_at INTEGER,
                user_agent TEXT
            )""",
        ),
    ),
    (
        4,
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
    (
        5,
        (
            # Per (producer, stream): the byte ranges of the agent's file records that stored batches
            # covered, as JSON [[start, end], ...] merged; written with the batch (storage/sql.py
            # `_record_streams`), read by `reset-state` after a destroyed queue (docs/protocol.md, "Streams").
            """CREATE TABLE producer_streams (
                producer TEXT NOT NULL,
                stream TEXT NOT NULL,
                ranges TEXT NOT NULL,
                updated_at INTEGER NOT NULL,
                PRIMARY KEY (producer, stream)
            )""",
        ),
    ),
    (
        6,
        (
            # Per-bucket totals of each level (length 60: `counts`, 3600: `counts_hour`, 86400:
            # `counts_day`): occurrences, and distinct addresses, kept exact by every write to those
            # tables in the same transaction (sql_windows.py, "Totals"), so that the overview's
            # chart reads a few hundred rows instead of scanning the buckets.
            """CREATE TABLE bucket_totals (
                length INTEGER NOT NULL,
                bucket INTEGER NOT NULL,
                total INTEGER NOT NULL,
                addresses INTEGER NOT NULL,
                PRIMARY KEY (length, bucket)
            ) WITHOUT ROWID""",
            "INSERT INTO bucket_totals (length, bucket, total, addresses) "
            "SELECT 60, bucket, min(sum(total), 9223372036854775807), "
            "count(DISTINCT ipkey) FROM counts GROUP BY bucket",
            "INSERT INTO bucket_totals (length, bucket, total, addresses) "
            "SELECT 3600, bucket, min(sum(total), 9223372036854775807), "
            "count(DISTINCT ipkey) FROM counts_hour GROUP BY bucket",
            "INSERT INTO bucket_totals (length, bucket, total, addresses) "
            "SELECT 86400, bucket, min(sum(total), 9223372036854775807), "
            "count(DISTINCT ipkey) FROM counts_day GROUP BY bucket",
        ),
    ),
    (
        7,
        (
            # Per-(agent, source) totals of each level's buckets (length as in `bucket_totals`):
            # the occurrences of the level's rows of that agent and source, kept exact with them in
            # the same transactions (sql_windows.py, "Totals"), so that the agents page reads a few
            # rows per minute instead of every bucket row of its day.
            """CREATE TABLE source_totals (
                length INTEGER NOT NULL,
                bucket INTEGER NOT NULL,
                agent INTEGER NOT NULL,
                source INTEGER NOT NULL,
                total INTEGER NOT NULL,
                PRIMARY KEY (length, bucket, agent, source)
            ) WITHOUT ROWID""",
            "INSERT INTO source_totals (length, bucket, agent, source, total) "
            "SELECT 60, bucket, agent, source, min(sum(total), 9223372036854775807) "
            "FROM counts GROUP BY bucket, agent, source",
            "INSERT INTO source_totals (length, bucket, agent, source, total) "
            "SELECT 3600, bucket, agent, source, min(sum(total), 9223372036854775807) "
            "FROM counts_hour GROUP BY bucket, agent, source",
            "INSERT INTO source_totals (length, bucket, agent, source, total) "
            "SELECT 86400, bucket, agent, source, min(sum(total), 9223372036854775807) "
            "FROM counts_day GROUP BY bucket, agent, source",
        ),
    ),
    (
        8,
        (
            # Per agent, its latest status report (docs/protocol.md, "Agent status"): what its queue
            # held and since when its uploads failed, as it said with its last batch or heartbeat
            # (storage/sql_agents.py). One row per agent, replaced by each report: no history.
            # `oldest_age` and `failing_for` are seconds before `received_at`, as the agent measured.
            """CREATE TABLE agent_reports (
                agent TEXT PRIMARY KEY,
                received_at INTEGER NOT NULL,
                version TEXT NOT NULL,
                queued_batches INTEGER NOT NULL,
                queued_records INTEGER NOT NULL,
                queued_bytes INTEGER NOT NULL,
                oldest_age REAL,
                failing_for REAL NOT NULL,
                dead_batches INTEGER NOT NULL,
                sources TEXT NOT NULL
            )""",
        ),
    ),
    (
        9,
        (
            # An address counted by one agent only: that agent, and no `ip_agents` row (its totals are
            # the address's); NULL: see `ip_agents` (storage/sqlite.py, UPSERT_IP_AGENTS). Rows from
            # before have NULL and their `ip_agents` rows.
            "ALTER TABLE ips ADD COLUMN agent TEXT",
        ),
    ),
    (
        10,
        (
            # The minute buckets by time (bucket first, with `total`, so that it covers every column
            # a window reads): a short window, or one source's, is one range of this index instead
            # of a scan of the buckets or of `ips` (sql_windows.py, the plans by time; docs/dashboard.md).
            # New rows land at its newest end; its cost to ingest is in docs/benchmarks.md.
            "CREATE INDEX counts_recent ON counts (bucket, total)",
        ),
    ),
    # PostgreSQL's indexes of the buckets by time and of `ips.agent` (migrations/postgres.py, 11):
    # SQLite reads its buckets by time through migration 10's covering `counts_recent` (and 13's of
    # the coarser levels). The number is kept so that both schemas count alike.
    (11, ()),
    (
        12,
        (
            # Each address's number of digits of its total, and an index of those counted at least a hundred
            # times by it: the first addresses of a long window by count are searched among the
            # most counted a tier at a time instead of in a read of all of `ips` sorted by total
            # (sql_windows.py, `_candidates`; docs/dashboard.md). The tier changes a few times in an
            # address's life, so the index is written then only: an index of the total itself would
            # be rewritten by every batch (SQLite updates an index whenever a column of it is set),
            # and the tier is set by triggers, only when it differs, for that reason. Every writer of
            # `ips` gets it right without knowing of it.
            "ALTER TABLE ips ADD COLUMN tier INTEGER NOT NULL DEFAULT 1",
            "UPDATE ips SET tier = length(total) WHERE length(total) <> 1",
            "CREATE INDEX ips_tier ON ips (tier) WHERE tier >= 3",
            "CREATE TRIGGER ips_tier_on_insert AFTER INSERT ON ips WHEN length(new.total) <> new.tier "
            "BEGIN UPDATE ips SET tier = length(new.total) WHERE ip = new.ip; END",
            "CREATE TRIGGER ips_tier_on_update AFTER UPDATE OF total ON ips WHEN length(new.total) <> new.tier "
            "BEGIN UPDATE ips SET tier = length(new.total) WHERE ip = new.ip; END",
        ),
    ),
    (
        13,
        (
            # The hour and day levels by time, as migration 10 the minutes: the plans by time of
            # sql_windows.py (newest first, the whole sum of a window) read every level of a window
            # by time, as on PostgreSQL (its migration 11). Only a roll-up writes these levels.
            "CREATE INDEX counts_hour_recent ON counts_hour (bucket, total)",
            "CREATE INDEX counts_day_recent ON counts_day (bucket, total)",
        ),
    ),
)
