"""`python -m remote_uploader` is the same as the `remote-uploader` command."""

from remote_uploader.cli import main

raise SystemExit(main())
