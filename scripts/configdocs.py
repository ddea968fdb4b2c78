"""Write the key tables of docs/configuration.md (the agent's) and docs/collector.md (the collector's)
from the declarations in config.py and collector/settings.py, between their BEGIN and END markers.

    python scripts/configdocs.py          # rewrite the tables
    python scripts/configdocs.py --check  # exit 1 if a table is not what the declarations give

The docs tests run the same comparison (tests/agent/test_docs.py, tests/collector/test_settings.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

from remote_uploader import config
from remote_uploader.collector import settings as collector_settings
from remote_uploader.settings import markdown_table, with_generated

ROOT = Path(__file__).resolve().parents[1]
TABLES = {
    ROOT / "docs" / "configuration.md": markdown_table(config.TABLE),
    ROOT / "docs" / "collector.md": markdown_table(collector_settings.TABLE, short_names=True, flags=True),
}


def main(argv: list[str]) -> int:
    stale = []
    for path, table in TABLES.items():
        text = path.read_text(encoding="utf-8")
        wanted = with_generated(text, table)
        if wanted != text:
            stale.append(path)
            if "--check" not in argv:
                path.write_text(wanted, encoding="utf-8")
    for path in stale:
        print(f"{path.relative_to(ROOT)}: {'out of date' if '--check' in argv else 'rewritten'}")
    return 1 if stale and "--check" in argv else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
