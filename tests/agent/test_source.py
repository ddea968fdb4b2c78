"""The reader: whole lines only, bounded memory, long lines in pieces, files matched once."""

from __future__ import annotations

import os
from pathlib import Path

from remote_uploader.agent.source import BlockReader, expand_sources
from remote_uploader.config import SourceConfig


def read_all(path: Path, block: int, offset: int = 0) -> tuple[list[bytes], BlockReader]:
    fd = os.open(path, os.O_RDONLY)
    reader = BlockReader(fd, offset, block, 8)
    pieces = [bytes(chunk.buf[chunk.start:chunk.end]) for chunk in reader.chunks()]
    return pieces, reader


def test_chunks_end_at_line_ends_and_cover_the_file_exactly(tmp_path: Path) -> None:
    path = tmp_path / "log"
    data = b"".join(b"line %d 10.0.0.%d\n" % (i, i % 250 + 1) for i in range(5000))
    path.write_bytes(data)
    pieces, reader = read_all(path, 4096)
    assert b"".join(pieces) == data
    assert all(piece.endswith(b"\n") for piece in pieces)
    assert reader.offset == len(data)


def test_an_incomplete_final_line_is_held_back(tmp_path: Path) -> None:
    path = tmp_path / "log"
    path.write_bytes(b"one\ntwo\nthr")
    pieces, reader = read_all(path, 4096)
    assert b"".join(pieces) == b"one\ntwo\n"
    assert reader.offset == 8 and reader.pending == 3
    partial = reader.take_partial()
    assert partial is not None and bytes(partial.buf[partial.start:partial.end]) == b"thr"


def test_reading_resumes_from_an_offset_with_the_real_left_context(tmp_path: Path) -> None:
    path = tmp_path / "log"
    path.write_bytes(b"abcdefghij\nklm\n")
    fd = os.open(path, os.O_RDONLY)
    reader = BlockReader(fd, 11, 4096, 8)
    chunk = reader.next_chunk()
    assert chunk is not None
    assert bytes(chunk.buf[chunk.start - 8:chunk.start]) == b"defghij\n"
    assert bytes(chunk.buf[chunk.start:chunk.end]) == b"klm\n"


def test_a_line_longer_than_the_block_is_cut_at_separators_never_loaded_whole(tmp_path: Path) -> None:
    path = tmp_path / "log"
    line = b" ".join(b"word%d" % i for i in range(20000)) + b"\n"
    path.write_bytes(line)
    pieces, reader = read_all(path, 4096)
    assert b"".join(pieces) == line
    assert len(pieces) > 10
    assert max(len(piece) for piece in pieces) <= 4096
    assert reader.offset == len(line)


def test_a_run_without_any_separator_is_skipped_in_blocks(tmp_path: Path) -> None:
    path = tmp_path / "log"
    path.write_bytes(b"x" * 20000 + b" 1.2.3.4\n")
    fd = os.open(path, os.O_RDONLY)
    chunks = [(c.scan, c.long_line, c.nbytes) for c in BlockReader(fd, 0, 4096, 8).chunks()]
    assert chunks[0] == (False, True, 4096)
    assert sum(n for _, _, n in chunks) == 20009


def test_a_file_matched_by_two_globs_or_a_symlink_is_read_once(tmp_path: Path) -> None:
    (tmp_path / "a.log").write_text("x\n")
    os.symlink(tmp_path / "a.log", tmp_path / "link.log")
    files, problems = expand_sources([SourceConfig(paths=(str(tmp_path / "*.log"), str(tmp_path / "a.log")))])
    assert [f.path for f in files] == [str(tmp_path / "a.log")]
    assert problems == []


def test_directories_fifos_links_loops_and_compressed_files_are_not_read(tmp_path: Path) -> None:
    (tmp_path / "dir.log").mkdir()
    os.mkfifo(tmp_path / "fifo.log")
    os.symlink(tmp_path / "loop.log", tmp_path / "loop.log")
    (tmp_path / "old.log.gz").write_bytes(b"\x1f\x8b")
    (tmp_path / "ok.log").write_text("x\n")
    files, problems = expand_sources([SourceConfig(paths=(str(tmp_path / "*.log*"),))])
    assert [f.path for f in files] == [str(tmp_path / "ok.log")]
    reasons = {Path(p.path).name: p.reason for p in problems}
    assert "directory" in reasons["dir.log"]
    assert "FIFO" in reasons["fifo.log"]
    assert "loop" in reasons["loop.log"]


def chunk_list(path: Path, block: int, expected: int | None) -> tuple[list[tuple[bytes, bool, bool, int]], int]:
    fd = os.open(path, os.O_RDONLY)
    try:
        reader = BlockReader(fd, 0, block, 8, expected=expected)
        got = [(bytes(c.buf[c.start:c.end]), c.scan, c.long_line, c.end_offset) for c in reader.chunks(partial=True)]
        return got, len(reader.buf)
    finally:
        os.close(fd)


def test_a_reader_sized_for_less_than_the_file_gives_the_chunks_of_a_whole_block_buffer(tmp_path: Path) -> None:
    # Short lines, then lines longer than the first buffer (64 KiB) and than the block (256 KiB),
    # with and without separators, then an unterminated end: a smaller first buffer (a file that
    # grew after it was sized, or a wrong guess) must change no chunk, no long-line flag, no offset.
    path = tmp_path / "log"
    data = b"".join(b"GET /%d 10.0.%d.%d\n" % (i, i % 200, i % 250 + 1) for i in range(20000))
    data += b"x" * 100_000 + b" 192.0.2.1\n" + b"y" * 300_000 + b"\n" + b" ".join([b"w 198.51.100.7"] * 40_000) + b"\n"
    data += b"".join(b"tail %d 203.0.113.%d\n" % (i, i % 250 + 1) for i in range(5000)) + b"no end 192.0.2.9"
    path.write_bytes(data)
    block = 256 * 1024
    whole, _ = chunk_list(path, block, None)
    assert b"".join(piece for piece, *_ in whole) == data
    assert any(long_line for _, _, long_line, _ in whole)
    for expected in (0, 1, 70_000, 200_000, len(data)):
        assert chunk_list(path, block, expected)[0] == whole


def test_a_reader_told_of_a_few_bytes_allocates_a_small_buffer(tmp_path: Path) -> None:
    path = tmp_path / "log"
    path.write_bytes(b"one 192.0.2.1\n")
    chunks, size = chunk_list(path, 4 * 1024 * 1024, 14)
    assert [piece for piece, *_ in chunks] == [b"one 192.0.2.1\n"]
    assert size == 8 + 64 * 1024
