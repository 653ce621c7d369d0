"""`python -m experiments.demo_servers --port N`: serve the demo tools and grader in the foreground."""

from __future__ import annotations

import argparse
import logging
import os

from experiments.demo_servers.app import DemoServer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="rftweb demo tool and grader server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument(
        "--signing-secret",
        default=os.environ.get("RFT_DEMO_SIGNING_SECRET") or None,
        help="verify X-RFT-Signature on every POST (default: $RFT_DEMO_SIGNING_SECRET, else off)",
    )
    parser.add_argument(
        "--mcp-port",
        type=int,
        default=None,
        help="also serve the workspace tools as an MCP server on this port",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    server = DemoServer(
        host=args.host, port=args.port, signing_secret=args.signing_secret, mcp_port=args.mcp_port
    )
    logging.getLogger(__name__).info(
        "demo tool/grader server on %s (signatures %s)",
        server.url,
        "required" if args.signing_secret else "off",
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()


if __name__ == "__main__":
    main()
