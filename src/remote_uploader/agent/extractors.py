"""The one factory from a source's settings to the extractor that counts it.

Why a module of its own: the engines (extract.py's stdlib engine, extract_native.py's C core,
extract_fast.py's hyperscan) build on extract.py's rules, and the choice among them sits above
all three; in extract.py it made each engine and the rules import one another (an import cycle).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from remote_uploader.agent.extract import ExcludingExtractor, Extractor, RegexExtractor, StdlibExtractor
from remote_uploader.agent.timestamps import with_times
from remote_uploader.filters import ENGINES, compile_regex, parse_excludes


def _native_engine(required: bool) -> Extractor | None:
    """The native engine, or None when it was not compiled into this installation (and not required)."""
    try:
        from remote_uploader.agent.extract_native import NativeExtractor
    except ImportError as exc:
        if exc.name != "remote_uploader.agent._native":
            raise  # a bug of ours, not a missing optional build
        if required:
            raise ValueError(
                "engine 'native' is not built in this installation: reinstall with a C compiler and the "
                "Python headers present (pip install .), or choose 'stdlib'"
            ) from exc
        return None
    return NativeExtractor()


def _hyperscan_engine(required: bool) -> Extractor | None:
    """The hyperscan engine, or None when the package is missing (and not required)."""
    try:
        from remote_uploader.agent.extract_fast import HyperscanExtractor
    except ImportError as exc:
        if exc.name != "hyperscan":
            raise  # a bug of ours, not a missing optional package
        if required:
            raise ValueError(
                "engine 'hyperscan' needs the hyperscan package: pip install 'remote-uploader[fast]'"
            ) from exc
        return None
    return HyperscanExtractor()


def build_extractor(*, regex: str | None = None, exclude: Sequence[str] = (), engine: str = "auto",
                    timestamp_pattern: str | None = None) -> Extractor:
    """timestamp_pattern: the source's log time (timepatterns.py); the extractor then also counts
    by each line's own minute (agent/timestamps.py, `TimedExtractor.scan_minutes`).

    An extractor from its options. Raises ValueError (naming the bad value) for a bad option.

    engine: "native" (the C core, compiled by `pip install .` where a compiler exists), "stdlib"
    (standard library only: the pure-Python path), "hyperscan" (needs `remote-uploader[fast]`), or
    "auto": the first of native, hyperscan, stdlib that is installed. All give identical counts.
    With `regex`, only the addresses its group `ip` captures are counted (the engine is unused).
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown extraction engine {engine!r}; choose one of {', '.join(ENGINES)}")
    networks = parse_excludes(exclude)
    extractor: Extractor | None = None
    if regex is not None:
        extractor = RegexExtractor(compile_regex(regex))
    elif engine in ("auto", "native"):
        extractor = _native_engine(required=engine == "native")
    if extractor is None and engine in ("auto", "hyperscan"):
        extractor = _hyperscan_engine(required=engine == "hyperscan")
    if extractor is None:
        extractor = StdlibExtractor()
    if networks:
        extractor = ExcludingExtractor(extractor, networks)
    if timestamp_pattern is not None:
        extractor = with_times(extractor, timestamp_pattern)
    return extractor


class SourceRules(Protocol):
    """What of a source's settings decides its extractor (config.SourceConfig, parallel.ExtractorSpec)."""

    @property
    def regex(self) -> str | None: ...

    @property
    def exclude(self) -> Sequence[str]: ...

    @property
    def timestamp_pattern(self) -> str | None: ...


def extractor_for(source: SourceRules, engine: str = "auto") -> Extractor:
    """The one factory from a source's settings to its extractor: `once`, `forever` and its reload,
    the worker processes, `check` and the configuration's own validation all build through here,
    so a source can never be counted by different rules in two places."""
    return build_extractor(regex=source.regex, exclude=source.exclude, engine=engine,
                           timestamp_pattern=source.timestamp_pattern)
