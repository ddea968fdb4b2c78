"""An agent process loads no OpenSSL (about 4 MiB per process) unless the collector is https://: the
whole agent (CLI, runner, forever, the HTTP sink) imported in a fresh interpreter, its maps read."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

AGENT_PROCESS = textwrap.dedent("""
    import json, sys
    import remote_uploader.cli, remote_uploader.agent.runner, remote_uploader.agent.forever
    from remote_uploader.agent.sink import HttpSink
    from remote_uploader.config import load

    HttpSink(load(None, env={{}}, overrides={{"server.url": "{url}"}}).server)
    maps = open("/proc/self/maps").read()
    print(json.dumps({{"ssl": "ssl" in sys.modules, "libcrypto": "libcrypto" in maps}}))
""")


def loaded(url: str) -> dict[str, bool]:
    done = subprocess.run([sys.executable, "-c", AGENT_PROCESS.format(url=url)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_an_http_collector_does_not_load_openssl() -> None:
    assert loaded("http://127.0.0.1:8080") == {"ssl": False, "libcrypto": False}


def test_an_https_collector_loads_it() -> None:
    assert loaded("https://127.0.0.1:8443") == {"ssl": True, "libcrypto": True}
