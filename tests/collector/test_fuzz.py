"""Fuzzing the API from its own OpenAPI schema (schemathesis): no input may cause a 5xx.

Bounded so that it stays a test, not a campaign: 50 examples per operation (positive and
negative data), against one collector on SQLite. Every response must also match the schema
(status codes, content types, bodies).
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from schemathesis.checks import positive_data_acceptance
from schemathesis.config import ChecksConfig, SchemathesisConfig

from remote_uploader.collector.batch import parse_batch
from remote_uploader.errors import BatchInvalid
from remote_uploader.protocol import format_time
from tests.helpers.collector_fixtures import CollectorProcess


@pytest.fixture(scope="module")
def fuzz_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CollectorProcess]:
    workdir = tmp_path_factory.mktemp("fuzz")
    process = CollectorProcess(workdir, f"sqlite://{workdir}/collector.db", ["--no-access-log"])
    process.start()
    yield process
    process.stop()


def _app_schema() -> dict[str, Any]:
    """The schema the collector serves at /openapi.json, built without a server.

    (Loaded at import rather than from the running server through a fixture: schemathesis'
    lazy fixture loader does not work with pytest 9. A test below checks that the served
    schema is this one.)
    """
    from remote_uploader.collector.app import create_app
    from remote_uploader.collector.settings import CollectorSettings
    from remote_uploader.collector.storage.sqlite import SqliteStorage

    unused = SqliteStorage(Path(tempfile.gettempdir()) / "remote-uploader-schema" / "unused.db")
    return create_app(CollectorSettings(db="sqlite://unused"), unused).openapi()


APP_SCHEMA = _app_schema()
# A body the schema forbids may also be refused as too large (413: a status report over 4 KiB, a
# batch over `max_body`), which is a rejection as much as a 400; schemathesis' default list of
# rejection statuses for `negative_data_rejection` does not have 413, so it is added to them.
REJECTIONS = [*ChecksConfig().negative_data_rejection.expected_statuses, "413"]
schema = schemathesis.openapi.from_dict(APP_SCHEMA, config=SchemathesisConfig.from_dict(
    {"checks": {"negative_data_rejection": {"expected-statuses": REJECTIONS}}}))


@schema.parametrize()
@settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_request_makes_a_server_error(case: schemathesis.Case, fuzz_target: CollectorProcess) -> None:
    # positive_data_acceptance expects every schema-valid body to be accepted, but a schema cannot
    # say "canonical IP" or "agent equals the token's name", so valid-looking batches get 400/403.
    case.call_and_validate(
        base_url=fuzz_target.url, headers=fuzz_target.headers(), excluded_checks=[positive_data_acceptance]
    )
    assert fuzz_target.proc is not None and fuzz_target.proc.poll() is None


def test_the_served_schema_is_the_fuzzed_one(fuzz_target: CollectorProcess) -> None:
    import httpx

    assert httpx.get(fuzz_target.url + "/openapi.json").json() == APP_SCHEMA


# The schema cannot express "canonical address" or "agent equals the token's name", so the
# generated batches above are nearly all rejected at validation. These properties go deeper:
# batches that are valid by construction, and the same batches with one field broken.

_addresses = st.one_of(
    st.ip_addresses(v=4).map(str).filter(lambda ip: ip != "0.0.0.0"),
    st.ip_addresses(v=6).filter(lambda ip: ip.ipv4_mapped is None and not ip.is_unspecified).map(str),
)
_times = st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(9999, 1, 1), timezones=st.just(UTC))
_records = st.lists(
    st.tuples(_addresses, st.integers(1, 2**40), _times, st.timedeltas(timedelta(0), timedelta(days=3)), st.text()),
    max_size=30,
)


def _wire(records: list[tuple[str, int, datetime, timedelta, str]]) -> list[dict[str, Any]]:
    return [
        {
            "ip": ip,
            "count": count,
            "first_seen": format_time(first),
            "last_seen": format_time(min(first + span, datetime(9999, 12, 30, tzinfo=UTC))),
            "source": source,
        }
        for ip, count, first, span, source in records
    ]


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(records=_records, batch_id=st.text(min_size=1, max_size=128).filter(str.isprintable))
def test_valid_batches_of_any_shape_are_counted_exactly_once(
    fuzz_target: CollectorProcess, records: list[tuple[str, int, datetime, timedelta, str]], batch_id: str
) -> None:
    before = fuzz_target.counts()
    batch = {
        "agent": "test-agent",
        "batch_id": batch_id,
        "sent_at": format_time(datetime.now(UTC)),
        "records": _wire(records),
    }
    first = fuzz_target.post_batch(batch)
    assert first.status_code == 200, first.text
    replay = fuzz_target.post_batch(batch)
    assert replay.status_code == 200 and replay.json()["duplicate"] is True
    after = fuzz_target.counts()
    added: Counter[str] = Counter()
    if not first.json()["duplicate"]:  # hypothesis may repeat a batch id it used before
        for ip, count, *_ in records:
            added[ip] += count
    assert {ip: after[ip] - before.get(ip, 0) for ip in after if after[ip] != before.get(ip, 0)} == dict(added)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    records=_records.filter(bool),
    index=st.integers(0, 29),
    field=st.sampled_from(["ip", "count", "first_seen", "last_seen", "source"]),
    bad=st.one_of(st.none(), st.booleans(), st.floats(), st.text(max_size=20), st.integers(-5, 0), st.lists(st.none())),
)
def test_a_batch_with_one_broken_field_is_400_and_stores_nothing(
    fuzz_target: CollectorProcess, records: list[Any], index: int, field: str, bad: object
) -> None:
    wire = _wire(records)
    index %= len(wire)
    wire[index][field] = bad
    batch = {"agent": "test-agent", "batch_id": "broken", "sent_at": "2024-01-01T00:00:00Z", "records": wire}
    try:
        parse_batch(json.dumps(batch).encode())
    except BatchInvalid:
        pass
    else:
        assume(False)  # the "broken" value happened to be valid (e.g. a text that is an address)
    before = fuzz_target.counts()
    response = fuzz_target.post_batch(batch)
    assert response.status_code == 400
    assert f"records[{index}].{field}" in [item["field"] for item in response.json()["detail"]]
    assert fuzz_target.counts() == before
