"""A batch's deltas in the bulk form each backend loads fastest, made before the write begins.

Loading 100,000 deltas row by row from Python costs about as much as the upserts themselves
(sqlite3 binds each parameter of each row in Python; SQLite parsing the same rows as SQL text is
no faster). So the deltas are encoded *before* the write transaction, by a pure function that
may run in another process (a parsing worker, see collector/parsing.py):

- `sqlite-image`: a whole SQLite database file, in memory, holding one table `deltas`; the
  writer connection loads it with `Connection.deserialize` into a schema it has attached for
  this purpose (a memory copy), and the upserts read it from there;
- `postgres-copy`: the rows in the text format of `COPY ... FROM STDIN`, sent as they are.

The functions take validated deltas (canonical addresses, integer counts and times); the text
form is checked anyway, so that no caller can smuggle a column or a row into a COPY stream.
"""

from __future__ import annotations

import itertools
import operator
import sqlite3
from collections.abc import Sequence
from itertools import repeat
from typing import Any, Protocol

from remote_uploader.collector.storage.base import BulkForm, EncodedDeltas, IpDelta
from remote_uploader.collector.storage.model import BucketDelta


class Cursor(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ..., /) -> Any: ...

    def executemany(self, sql: str, params: Sequence[Sequence[Any]], /) -> Any: ...


# `Connection.serialize` needs SQLite's deserialize API: built in since 3.36, optional before.
HAS_SQLITE_IMAGE = hasattr(sqlite3.Connection, "serialize")

SQLITE_DELTAS = (
    "CREATE TABLE deltas (ip TEXT NOT NULL, ipkey BLOB NOT NULL, "
    "total INTEGER NOT NULL, first_seen INTEGER NOT NULL, last_seen INTEGER NOT NULL)"
)
# The time buckets' deltas: the source by its index in `sources` (a batch has few sources).
SQLITE_BUCKETS = (
    "CREATE TABLE bdeltas (ipkey BLOB NOT NULL, bucket INTEGER NOT NULL, src INTEGER NOT NULL, "
    "total INTEGER NOT NULL)"
)
SQLITE_SOURCES = "CREATE TABLE sources (idx INTEGER PRIMARY KEY, name TEXT NOT NULL)"
# The bucket deltas summed per (bucket, source index), for the per-(agent, source) totals
# (storage/sql_windows.py, "Totals"): made with the image, so that the sort it takes is done by
# the parsing worker rather than by the writer, under the write lock.
SQLITE_BUCKET_SUMS = "CREATE TABLE bsums (bucket INTEGER NOT NULL, src INTEGER NOT NULL, total INTEGER NOT NULL)"
SUM_BUCKETS = "INSERT INTO {schema}bsums SELECT bucket, src, sum(total) FROM {schema}bdeltas GROUP BY bucket, src"
# Rows per INSERT: one statement binding many rows is about twice as fast as executemany, which
# pays a statement step and reset per row; past a few hundred rows there is nothing left to gain.
ROWS_PER_INSERT = 500


def encode(form: BulkForm, deltas: Sequence[IpDelta], buckets: Sequence[BucketDelta] = ()) -> EncodedDeltas:
    if form == "sqlite-image":
        return EncodedDeltas(form, len(deltas), sqlite_image(deltas, buckets), buckets=len(buckets))
    if form == "postgres-copy":
        return EncodedDeltas(form, len(deltas), postgres_copy(deltas), postgres_bucket_copy(buckets), len(buckets))
    raise ValueError(f"unknown bulk form {form!r}")


def encoded(
    deltas: Sequence[IpDelta] | EncodedDeltas, form: BulkForm, buckets: Sequence[BucketDelta] = ()
) -> EncodedDeltas:
    """`deltas` in `form`: as they are if already encoded so, else encoded now."""
    if isinstance(deltas, EncodedDeltas):
        if deltas.form != form:
            raise TypeError(f"deltas encoded as {deltas.form}, not {form}")
        return deltas
    return encode(form, deltas, buckets)


def source_indexes(buckets: Sequence[BucketDelta]) -> tuple[list[tuple[int, str]], list[tuple[bytes, int, int, int]]]:
    """(sources as (index, name), bucket rows with the source's index instead of its name)."""
    names = list(dict.fromkeys(map(_SOURCE, buckets)))
    if len(names) == 1:  # the agent's batches of one source: columns by C calls, no loop in Python
        rows = list(zip(map(_KEY, buckets), map(_BUCKET, buckets), repeat(0), map(_TOTAL, buckets), strict=False))
        return [(0, names[0])], rows
    index: dict[str, int] = {}
    rows = []
    for key, bucket, source, total in buckets:
        number = index.get(source)
        if number is None:
            number = index[source] = len(index)
        rows.append((key, bucket, number, total))
    return [(number, name) for name, number in index.items()], rows


_KEY, _BUCKET, _SOURCE, _TOTAL = (operator.itemgetter(n) for n in range(4))


def bucket_sums(rows: Sequence[tuple[bytes, int, int, int]]) -> list[tuple[int, int, int]]:
    """(bucket, source index, total) of `source_indexes`' rows: what `SUM_BUCKETS` makes, for
    rows staged in the writer's process (a dict here costs less than SQLite's sort of them)."""
    sums: dict[tuple[int, int], int] = {}
    for _, bucket, source, total in rows:
        sums[bucket, source] = sums.get((bucket, source), 0) + total
    return [(bucket, source, total) for (bucket, source), total in sums.items()]



def insert_many(conn: sqlite3.Connection | Cursor, table: str, width: int, rows: Sequence[Sequence[object]],
                blobs: Sequence[int] = ()) -> None:
    """`rows` into `table`, `ROWS_PER_INSERT` rows per statement.

    `blobs`: the columns that hold `bytes` (the packed addresses), bound as `bytearray`s. The
    sqlite3 module binds int, float, str and bytearray directly but sends every `bytes` value
    through its adapter lookup first, which costs about 2.5 times the bind of a bytearray; the
    conversion (one `map` in C per column) costs less than the difference (docs/benchmarks.md).
    """
    flat: list[Any] = list(itertools.chain.from_iterable(rows))
    for column in blobs:
        flat[column::width] = map(bytearray, flat[column::width])
    step = width * ROWS_PER_INSERT
    one = "(" + ",".join(["?"] * width) + ")"
    many = f"INSERT INTO {table} VALUES " + ",".join([one] * ROWS_PER_INSERT)
    full = len(flat) - len(flat) % step
    for start in range(0, full, step):
        conn.execute(many, flat[start : start + step])
    if full < len(flat):
        rest = (len(flat) - full) // width
        conn.execute(f"INSERT INTO {table} VALUES " + ",".join([one] * rest), flat[full:])


def sqlite_image(deltas: Sequence[IpDelta], buckets: Sequence[BucketDelta] = ()) -> bytes:
    """A SQLite database (the bytes of its file) with the deltas in table `deltas`, in order,
    and the bucket deltas in `bdeltas` with their sources in `sources` and their sums in `bsums`."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        conn.execute(SQLITE_DELTAS)
        conn.execute(SQLITE_BUCKETS)
        conn.execute(SQLITE_SOURCES)
        conn.execute(SQLITE_BUCKET_SUMS)
        conn.execute("BEGIN")
        insert_many(conn, "deltas", 5, deltas, blobs=(1,))
        if buckets:
            sources, rows = source_indexes(buckets)
            conn.executemany("INSERT INTO sources VALUES (?, ?)", sources)
            insert_many(conn, "bdeltas", 4, rows, blobs=(0,))
            conn.execute(SUM_BUCKETS.format(schema=""))
        conn.execute("COMMIT")
        return conn.serialize()
    finally:
        conn.close()


def postgres_copy(deltas: Sequence[IpDelta]) -> bytes:
    """The rows as `COPY deltas (ip, ipkey, total, first_seen, last_seen) FROM STDIN` text.

    The key is bytea in hex (`\\x0a000001`, its backslash doubled for COPY); `:d` refuses
    anything but integers. A canonical address has no tab, line break or backslash; the counts below
    prove that no row carried one, so the stream has exactly one line of five fields per delta.
    """
    text = "".join([f"{ip}\t\\\\x{key.hex()}\t{t:d}\t{f:d}\t{la:d}\n" for ip, key, t, f, la in deltas])
    rows = len(deltas)
    if text.count("\n") != rows or text.count("\t") != 4 * rows or text.count("\\") != 2 * rows or "\r" in text:
        raise ValueError("an address contains a tab, a line break or a backslash")
    return text.encode()


def postgres_bucket_copy(buckets: Sequence[BucketDelta]) -> bytes:
    """The bucket deltas as `COPY bdeltas (ipkey, bucket, source, total) FROM STDIN` text.

    A source may hold any character (collector/batch.py, `check_source`): backslash, tab, line
    feed and carriage return are written as COPY's escapes, so each delta is one line of four
    fields whatever its source."""
    parts = []
    for key, bucket, source, total in buckets:
        label = source.translate(_COPY_ESCAPES)
        parts.append(f"\\\\x{key.hex()}\t{bucket:d}\t{label}\t{total:d}\n")
    return "".join(parts).encode()


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
