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
"""

pytest_plugins = ["tests.helpers.fixtures"]
