"""The image's HEALTHCHECK: GET /healthz on [web] port of the configuration this container reads.

Every role serves /healthz on [web] host:port, so one check fits them all. The port comes from the
same settings the process reads (the file named by $MONITOR_CONFIG, then MONITOR_* variables).
Exit 0 when it answers 200, 1 otherwise (what Docker and Podman expect of a health check).
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request


def main() -> int:
    from monitor.settings import load_settings

    try:
        port = load_settings().web.port
    except Exception as error:  # a configuration the process would refuse too: unhealthy, said why
        print(f"healthcheck: {error}", file=sys.stderr)
        return 1
    url = f"http://127.0.0.1:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as error:
        print(f"healthcheck: {url}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
