"""`python -m remote_uploader` is the same as the `remote-uploader` command."""

from remote_uploader.cli import main

# Guarded: worker processes started with "spawn" import this module again as __mp_main__.
if __name__ == "__main__":
    raise SystemExit(main())
