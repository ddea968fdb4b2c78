"""Worker-process extraction: same counts as one process, ranges tile the file, parts fit the cap."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from remote_uploader.agent.extractors import build_extractor
from remote_uploader.agent.parallel import ExtractorSpec, ParallelScanner, boundary, scan_parts
from tests.helpers.agent import write_access_log


def test_workers_give_the_same_counts_as_one_process_and_tile_the_file(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    expected = write_access_log(log, 40_000, seed=4, distinct=5000)
    size = log.stat().st_size
    scanner = ParallelScanner([ExtractorSpec(None, ())], [build_extractor()], workers=2, block_size=64 * 1024, cap=1000)
    fd = os.open(log, os.O_RDONLY)
    try:
        parts = list(scanner.scan(fd, str(log), 0, 0, size))
        assert len(scanner._procs) == 1  # `workers` counts this process, which scans every other task
    finally:
        scanner.close()
        os.close(fd)
    covered = parts[-1].end_offset
    assert 0 < size - covered < 3 * 64 * 1024  # the tail is left for the caller's own reader
    assert sum(p.nbytes for p in parts) == covered  # no byte twice, none skipped
    assert all(len(p.counts) <= 1000 for p in parts)
    offsets = [p.end_offset for p in parts]
    assert offsets == sorted(offsets)
    totals: dict[str, int] = {}
    for part in parts:
        for ip, n in part.counts.items():
            totals[ip] = totals.get(ip, 0) + n
    tail = build_extractor().scan(log.read_bytes(), covered, size)
    for ip, n in tail.items():
        totals[ip] = totals.get(ip, 0) + n
    assert totals == dict(expected)


def test_a_boundary_is_just_after_the_first_newline_at_or_after_n_minus_1(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"aaaa\nbbbb\ncccc\n")
    fd = os.open(path, os.O_RDONLY)
    assert [boundary(fd, n) for n in (1, 5, 6, 7, 10, 11)] == [5, 5, 10, 10, 10, 15]
    os.close(fd)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=60), min_size=1, max_size=300), st.integers(1, 40))
def test_parts_never_exceed_the_cap_and_add_up_to_one_scan(ips: list[int], cap: int) -> None:
    data = b"".join(b"hit 10.1.%d.%d\n" % (i // 8, i % 8 + 1) for i in ips)
    buf = b"\n" * 8 + data
    extractor = build_extractor(engine="stdlib")
    parts = scan_parts(extractor, buf, 8, len(buf), len(data), cap)
    whole = extractor.scan(buf, 8, len(buf))
    merged: dict[str, int] = {}
    for part in parts:
        assert len(part.counts) <= cap or part.lines <= 1
        for ip, n in part.counts.items():
            merged[ip] = merged.get(ip, 0) + n
    assert merged == whole
    assert sum(p.nbytes for p in parts) == len(data)
    assert parts[-1].end_offset == len(data)


def test_closing_in_the_middle_of_a_scan_stops_the_workers_at_once(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    write_access_log(log, 60_000, seed=5, distinct=5000)
    scanner = ParallelScanner([ExtractorSpec(None, ())], [build_extractor()], workers=2, block_size=16 * 1024, cap=1000)
    fd = os.open(log, os.O_RDONLY)
    try:
        parts = scanner.scan(fd, str(log), 0, 0, log.stat().st_size)
        next(parts)  # workers now have answers queued that nobody will read
        procs = list(scanner._procs)
        scanner.close()
        # 0, not -9: the worker left by itself (EPIPE or EOF), it did not have to be killed after a timeout
        assert [proc.returncode for proc in procs] == [0]
    finally:
        os.close(fd)
