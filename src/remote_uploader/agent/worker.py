"""Entry point of an extraction worker process (see parallel.py).

A module of its own so that the classes the worker pickles (`parallel.Part`) keep their real
module name: run as `python -m remote_uploader.agent.parallel` they would be `__main__.Part`.
"""

import gc
import sys

if __name__ == "__main__":
    # Imported with the cyclic garbage collector off and then frozen out of its collections, as
    # the agent's own start-up is (remote_uploader/__main__.py says why): a worker's start-up is
    # paid again by every `once` with more than one worker.
    gc.disable()
    from remote_uploader.agent.parallel import worker_main

    gc.freeze()
    gc.enable()
    sys.exit(worker_main())
