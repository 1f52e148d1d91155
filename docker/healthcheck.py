"""The image's HEALTHCHECK: GET /healthz on the port ``VIDEOBOT_HTTP_PORT`` names (default 8080).

Exit 0 when it answers 200, 1 otherwise; 0 as well when the port is 0 (the endpoint is off, so
there is nothing to ask). ``HEALTHCHECK_URL`` overrides the address (the worker image's /v1/health).
"""

import os
import sys
import urllib.request


def main() -> int:
    url = os.environ.get("HEALTHCHECK_URL", "").strip()
    if not url:
        port = os.environ.get("VIDEOBOT_HTTP_PORT", "").strip() or "8080"
        if port == "0":
            return 0
        url = f"http://127.0.0.1:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            return 0 if response.status == 200 else 1
    except OSError as error:
        print(f"healthcheck: {url}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
