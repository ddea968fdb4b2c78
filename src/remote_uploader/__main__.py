"""`python -m remote_uploader` is the same as the `remote-uploader` command."""

import sys

from remote_uploader.agent.signals import EARLY_SIGNALS, hold_early

# Before the imports below take their time: a SIGTERM during start-up stops the agent cleanly, a SIGHUP
# does not kill `forever` (cli.main holds the signals too, whatever the order of the options, and
# releases them). Guarded: worker processes started with "spawn" import this module again as __mp_main__.
if __name__ == "__main__" and sys.argv[1:2] in (["once"], ["forever"]):
    hold_early(EARLY_SIGNALS[sys.argv[1]])

from remote_uploader.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
