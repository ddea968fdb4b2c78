"""The dashboard's pure parts (the cache, the chart arithmetic, the lines to copy) and its paging."""

from __future__ import annotations

import fnmatch
import json
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from remote_uploader.collector.batch import parse_batch
from remote_uploader.collector.dashboard import charts, views
from remote_uploader.collector.dashboard.cache import TtlCache
from remote_uploader.collector.storage.model import WindowQuery
from remote_uploader.collector.storage.sqlite import SqliteStorage
from remote_uploader.protocol import format_time
from tests.helpers.batches import at, record, wire_batch

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def test_the_cache_reuses_a_value_until_its_ttl_then_computes_again() -> None:
    now = [0.0]
    cache = TtlCache(clock=lambda: now[0], background=False)
    calls: list[int] = []

    def compute() -> int:
        calls.append(1)
        return len(calls)

    assert cache.get("k", 10, compute) == (1, 0.0)
    now[0] = 9.5
    assert cache.get("k", 10, compute) == (1, 9.5)
    now[0] = 10.0
    assert cache.get("k", 10, compute) == (2, 0.0)
    assert cache.get("other", 10, compute) == (3, 0.0)


def test_a_stale_value_is_answered_at_once_while_one_thread_computes_the_next() -> None:
    cache = TtlCache()
    assert cache.get("k", 0, lambda: "old") == ("old", 0.0)
    entered = threading.Event()
    release = threading.Event()
    calls: list[int] = []

    def slow() -> str:
        calls.append(1)
        entered.set()
        release.wait(10)
        return "new"

    assert cache.get("k", 0, slow)[0] == "old"  # stale: answered now, refreshed behind
    assert entered.wait(10)
    assert cache.get("k", 0, slow)[0] == "old"  # still computing: no second computation
    release.set()
    for _ in range(1000):
        if cache.get("k", 3600, slow)[0] == "new":
            break
        time.sleep(0.01)
    assert cache.get("k", 3600, slow)[0] == "new"
    assert len(calls) == 1


def test_an_expensive_value_lives_ten_times_as_long_as_it_took() -> None:
    now = [0.0]
    cache = TtlCache(clock=lambda: now[0], background=False)

    def costly() -> str:
        now[0] += 5.0  # took five seconds
        return "v"

    cache.get("k", 10, costly)
    now[0] += 40
    assert cache.get("k", 10, costly)[1] == 40.0  # not refreshed: 50 s is its life
    now[0] += 10
    assert cache.get("k", 10, costly)[1] == 0.0


def test_the_cache_computes_once_for_requests_that_arrive_together() -> None:
    cache = TtlCache()
    started = threading.Event()
    release = threading.Event()
    calls: list[int] = []

    def slow() -> str:
        calls.append(1)
        started.set()
        release.wait(10)
        return "value"

    results: list[object] = []
    first = threading.Thread(target=lambda: results.append(cache.get("k", 60, slow)[0]))
    first.start()
    assert started.wait(10)
    second = threading.Thread(target=lambda: results.append(cache.get("k", 60, slow)[0]))
    second.start()
    release.set()
    first.join(10)
    second.join(10)
    assert results == ["value", "value"] and len(calls) == 1


def test_the_cache_keeps_at_most_its_bound() -> None:
    cache = TtlCache(max_entries=3)
    for key in range(10):
        cache.get(key, 60, lambda key=key: key)
    assert cache.get(0, 60, lambda: "again") == ("again", 0.0)  # the oldest were dropped
    assert cache.get(9, 60, lambda: "again")[0] == 9


def test_resampling_spreads_rolled_up_hours_and_keeps_the_total() -> None:
    points = [(T0, 60, 30), (T0 + timedelta(minutes=1), 60, 90), (T0 + timedelta(hours=1), 3600, 600)]
    values = charts.resample(points, T0, T0 + timedelta(hours=2), 4)  # 30-minute steps
    assert [round(v, 6) for v in values] == [4.0, 0.0, 10.0, 10.0]  # per minute: 120/30, -, 600/60
    assert round(sum(v * 30 for v in values)) == 30 + 90 + 600


def test_points_outside_the_chart_are_left_out() -> None:
    points = [(T0 - timedelta(hours=1), 60, 5), (T0 + timedelta(hours=3), 60, 5)]
    assert charts.resample(points, T0, T0 + timedelta(hours=2), 4) == [0.0, 0.0, 0.0, 0.0]


def test_a_source_label_filter_matches_only_itself_even_with_glob_characters() -> None:
    label = "/var/log/[weird]*?.log"
    pattern = views._literal_pattern(label)
    assert fnmatch.fnmatchcase(label, pattern)
    assert not fnmatch.fnmatchcase("/var/log/w.log", pattern)


def test_firewall_lines_for_an_address_and_a_range() -> None:
    assert dict(views.firewall_lines("2001:db8::1"))["iptables"] == "ip6tables -I INPUT -s 2001:db8::1 -j DROP"
    lines = dict(views.firewall_lines("203.0.113.0/24"))
    assert lines["nftables"] == "nft add element inet remote_uploader remote_uploader_v4 { 203.0.113.0/24 }"
    assert "ipset (hash:net set)" in lines


def test_y_axis_tops_are_round_numbers() -> None:
    assert [charts.nice_max(v) for v in (0, 1, 3, 7, 11, 180, 2001)] == [1, 1, 5, 10, 20, 200, 5000]


def test_the_pages_of_the_top_addresses_list_the_whole_window_once_in_order(tmp_path: Path) -> None:
    """Each page asks for the first addresses up to the next power of two of pages (51, 101, 201,
    401: `_rows_for`), so neighbouring pages come from different cuts: together they must still
    be the window's whole ranking, ties included, each address once, and the last page says so."""
    storage = SqliteStorage(tmp_path / "c.db")
    storage.migrate()
    records = [record(f"198.51.100.{i}" if i < 256 else f"2001:db8::{i:x}", i // 3 + 1, 10) for i in range(1, 271)]
    storage.store_batch(parse_batch(json.dumps(wire_batch("a", "1", records)).encode(), "a"), at(0))
    whole = sorted(storage.window_counts(WindowQuery(at(0))), key=lambda row: (-row.count, len(row.key), row.key))
    cache = TtlCache(background=False)
    shown: list[tuple[str, int]] = []
    for page in range(1, 7):
        found = views.top_addresses(storage, {"since": format_time(at(0)), "page": str(page)}, cache)
        shown += [(row.ip, row.count) for row in found["rows"]]
        assert (found["next_link"] is None) == (page == 6)
    assert shown == [(row.ip, row.count) for row in whole] and len(shown) == 270
