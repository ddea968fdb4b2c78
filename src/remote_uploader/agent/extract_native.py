"""The `native` extraction engine: the stdlib engine's patterns, matched and counted in C.

`pip install .` compiles `_native.c` where a C compiler and the Python headers exist (setup.py,
`optional=True`); elsewhere the build goes on without it and importing this module raises
ImportError, so `build_extractor(engine="auto")` falls back to a pure-Python engine.
`agent.engine = "stdlib"` (or REMOTE_UPLOADER_AGENT_ENGINE=stdlib) forces the pure path.

Why it is cheaper: the pure engines pay a Python-level step per occurrence (a `findall` result
or a callback, then `Counter`); here the scan and the counting run in C with the GIL released
(the uploader thread keeps running), and Python sees each distinct address once:

- IPv4: every rule of `V4_RULES` is applied in C; the keys are the canonical addresses.
- IPv6: C finds the candidates exactly as `V6_SCAN` does (the same anchors and lookarounds,
  the same non-overlapping search), applies the first steps of `validate_v6` (a word byte after
  the run; the group before the anchor and whether it is glued to a word) and counts each
  distinct (glued, group, run); `_v6_decide`, the stdlib judge, decides each distinct one once
  (cached). The IPv6 address rules therefore exist once, in Python.

The same extraction suites run against this engine, and a differential property test checks
native == stdlib on generated input (tests/test_extract_properties.py).
"""

from __future__ import annotations

import remote_uploader.agent._native as _native
from remote_uploader.agent.extract import CONTEXT, BoundedCache, Buffer, _padded, _v6_decide


def _judge_v6(key: bytes) -> str | None:
    """A key of the C core: b"0"/b"1" (glued to a word), the group, b":", the run (validate_v6's inputs)."""
    colon = key.index(b":", 1)
    return _v6_decide(key[1:colon], key[0] == 0x31, key[colon + 1 :])


class NativeExtractor:
    """The C core finds and counts; Python judges each distinct IPv6 candidate once."""

    name = "native"
    context = CONTEXT

    def __init__(self) -> None:
        self._v6 = BoundedCache[bytes]()

    def scan(self, buf: Buffer, start: int, end: int) -> dict[str, int]:
        buf, start, end = _padded(buf, start, end, self.context)
        out, v6 = _native.scan(buf, start, end)
        if v6:
            self._v6.resolve(v6, _judge_v6, out)
        return out

    def scan_counting(self, buf: Buffer, start: int, end: int) -> tuple[dict[str, int], int]:
        """`scan`, and the newlines of the range counted in the same pass over it (a Part's line
        count, `parallel.scan_parts`): one read of each block instead of two."""
        buf, start, end = _padded(buf, start, end, self.context)
        out, v6, lines = _native.scan(buf, start, end, True)
        if v6:
            self._v6.resolve(v6, _judge_v6, out)
        return out, lines
