"""Entry point of an extraction worker process (see parallel.py).

A module of its own so that the classes the worker pickles (`parallel.Part`) keep their real
module name: run as `python -m remote_uploader.agent.parallel` they would be `__main__.Part`.
"""

import sys

from remote_uploader.agent.parallel import worker_main

if __name__ == "__main__":
    sys.exit(worker_main())
