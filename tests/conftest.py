"""Fixtures shared by the whole suite live in tests/helpers; they are registered here.

Where a test goes (the layout mirrors src/remote_uploader):
- agent/test_<module>.py for src/remote_uploader/agent/<module>.py, a folder agent/<module>/ when
  there are several files (agent/extract/, agent/tail/); in process, no agent subprocess.
- collector/... likewise for src/remote_uploader/collector/ (storage/, decisions/, dashboard/).
- common/ for the modules both halves share (i18n, protocol, errors, settings).
- e2e/ for the real agent process (once, forever, rotation, crash, delivery, install) against a
  real receiver or collector.
- reliability/ for the fault and crash-loop runs scripts/reliability drives.
- helpers/ for what tests use (receiver, fault proxy, fixtures, builders), with its own tests.
Nothing else at this top level.

Servers are real and on 127.0.0.1: the `collector` fixtures serve the collector's app with uvicorn in
a thread of the test process (most API tests); `collector_process` runs `collector serve` as a child
for what only a process has (signals, exit codes, its log, SIGKILL, its memory). The agent's sinks
are checked by one contract (agent/test_sink_contract.py), the storages by another
(collector/storage/test_contract.py).
"""

pytest_plugins = ["tests.helpers.fixtures"]
