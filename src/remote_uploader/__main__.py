"""`python -m remote_uploader` is the same as the `remote-uploader` command: both run `main` below."""

import gc
import importlib
import sys
from contextlib import suppress

from remote_uploader.agent.signals import EARLY_SIGNALS, hold_early

#: What `once` and `forever` import first thing (cli.py imports them in the command, so that the
#: other commands do not pay for them); imported here with the rest of the start-up instead.
COMMAND_MODULES = {"once": "remote_uploader.agent.runner", "forever": "remote_uploader.agent.forever"}


def main() -> int:
    """Hold the stop signals, import the command line and the command's library, run it.

    Before the imports take their time: a SIGTERM during start-up stops the agent cleanly, a
    SIGHUP does not kill `forever` (cli.main holds the signals too, whatever the order of the
    options, and releases them).

    The imports run with the cyclic garbage collector off, and what they made is then frozen out
    of it: they leave some 20,000 tracked objects (classes, functions, module dictionaries) and
    next to no garbage, yet the collector ran 39 times over them while they were imported, and
    every later collection, the one at exit included, would walk them again. Importing the
    command line and the runner and exiting, 40 alternated rounds: with the collector off during
    the imports 0.98 of the CPU it took before, frozen after them 0.92, both 0.87. The worker
    processes do the same (agent/worker.py).
    """
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command in EARLY_SIGNALS:
        hold_early(EARLY_SIGNALS[command])
    gc.disable()
    try:
        from remote_uploader.cli import main as cli_main

        if command in COMMAND_MODULES:
            # A failure here is the command's to report: it imports the module again, inside the
            # command line's error boundary.
            with suppress(ImportError):
                importlib.import_module(COMMAND_MODULES[command])
    finally:
        gc.freeze()
        gc.enable()
    return cli_main()


# Guarded: worker processes started with "spawn" would import this module again as __mp_main__.
if __name__ == "__main__":
    raise SystemExit(main())
