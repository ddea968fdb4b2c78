#!/usr/bin/env python3
"""Compatibility entry point: `python3 remote_uploader.py once|forever|test`, as the old script ran.

It runs the installed package if there is one, else the copy in ./src next to this file.
"""

import os
import sys

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "src"))
# This file shares the package's name: drop it from the module table so the import below
# finds the package in src/, not this script.
sys.modules.pop("remote_uploader", None)

from remote_uploader.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
