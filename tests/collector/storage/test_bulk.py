"""The bulk forms of a batch's deltas: what each backend loads is exactly the deltas, in order."""

from __future__ import annotations

import sqlite3

import pytest

from remote_uploader.collector.storage import bulk
from remote_uploader.collector.storage.base import EncodedDeltas, IpDelta
from tests.helpers.batches import delta

DELTAS = [delta("192.0.2.1", 3, 0, 5), delta("2001:db8::1", 2**40 * 100_000, 1), delta("203.0.113.9", 1, 7)]


def rows_of_image(image: bytes) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(":memory:")
    conn.execute("ATTACH ':memory:' AS staging")
    conn.deserialize(image, name="staging")
    return conn.execute("SELECT * FROM staging.deltas ORDER BY rowid").fetchall()


@pytest.mark.skipif(not bulk.HAS_SQLITE_IMAGE, reason="this SQLite cannot serialize databases")
@pytest.mark.parametrize("count", [0, 1, 3, bulk.ROWS_PER_INSERT, bulk.ROWS_PER_INSERT * 2 + 7])
def test_a_sqlite_image_holds_exactly_the_deltas_in_order(count: int) -> None:
    deltas = [delta(f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", n + 1, n) for n in range(count)]
    if count == 3:
        deltas = DELTAS
    encoded = bulk.encode("sqlite-image", deltas)
    assert (encoded.form, encoded.count) == ("sqlite-image", count)
    assert [IpDelta(*row) for row in rows_of_image(encoded.data)] == deltas


def test_postgres_copy_text_is_one_line_of_five_fields_per_delta() -> None:
    assert (
        bulk.postgres_copy(DELTAS[:2])
        == (
            f"192.0.2.1\t\\\\xc0000201\t3\t{DELTAS[0].first_us}\t{DELTAS[0].last_us}\n"
            f"2001:db8::1\t\\\\x20010db8000000000000000000000001\t{2**40 * 100_000}\t"
            f"{DELTAS[1].first_us}\t{DELTAS[1].last_us}\n"
        ).encode()
    )


@pytest.mark.parametrize("ip", ["192.0.2.1\t1", "192.0.2.1\n", "192.0.2.1\\", "192.0.2.1\r"])
def test_postgres_copy_refuses_a_field_that_would_break_the_stream(ip: str) -> None:
    with pytest.raises(ValueError):
        bulk.postgres_copy([DELTAS[0]._replace(ip=ip)])


@pytest.mark.parametrize("total", ["1", "1\t2", 1.5, None])
def test_postgres_copy_refuses_counts_that_are_not_integers(total: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        bulk.postgres_copy([DELTAS[0]._replace(total=total)])


def test_encoded_deltas_pass_through_in_their_own_form_only() -> None:
    encoded = bulk.encode("postgres-copy", DELTAS)
    assert bulk.encoded(encoded, "postgres-copy") is encoded
    assert bulk.encoded(DELTAS, "postgres-copy") == encoded
    with pytest.raises(TypeError):
        bulk.encoded(encoded, "sqlite-image")
    with pytest.raises(ValueError):
        bulk.encode("csv", DELTAS)  # type: ignore[arg-type]
    assert isinstance(encoded, EncodedDeltas)


def test_postgres_bucket_copy_escapes_a_source_with_tabs_line_breaks_and_backslashes() -> None:
    from remote_uploader.collector.storage.model import BucketDelta

    text = bulk.postgres_bucket_copy([BucketDelta(b"\xc0\x00\x02\x01", 60, "a\tb\\c\nd\re", 3)])
    assert text == b"\\\\xc0000201\t60\ta\\tb\\\\c\\nd\\re\t3\n"
    assert text.count(b"\t") == 3 and text.count(b"\n") == 1
