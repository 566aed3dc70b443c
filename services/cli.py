"""The `analytics` command: serve services, run the local stack, render the gateway config."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from libs.config import SERVICE_NAMES, load_settings
from libs.errors import ConfigError
from libs.jsonlog import configure_logging
from libs.memory import return_freed_memory


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="analytics", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run one service, or all of them in one process")
    serve.add_argument("target", choices=["all", *SERVICE_NAMES])
    serve.add_argument("--demo", action="store_true", help="also feed the simulated platform (make up)")
    commands.add_parser("bridge", help="run the WebSocket bridge and /health alone")
    commands.add_parser("up", help="run Envoy and `serve all` in the foreground (what `make up` runs)")
    commands.add_parser(
        "up-distributed", help="run Pulsar, each service in its own process and Envoy (make up-distributed)"
    )
    demo = commands.add_parser("demo", help="feed the simulated platform through the ingest API")
    demo.add_argument("--target", required=True, help="host:port of a RealtimeService (or the gateway)")
    config = commands.add_parser("gateway-config", help="render the Envoy config")
    config.add_argument("--out", type=Path, default=Path("build/envoy.yaml"))
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of `analytics`."""
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"analytics: {exc}", file=sys.stderr)
        sys.exit(2)
    configure_logging(settings.service_name, settings.log_level)
    if args.command in ("serve", "bridge"):
        # Long-lived servers that build and drop large arrays: keep their memory from ratcheting up.
        return_freed_memory()
    try:
        if args.command == "serve":
            from services.runner import serve

            asyncio.run(serve(args.target, settings, with_demo=args.demo))
        elif args.command == "bridge":
            from services.runner import serve_bridge

            asyncio.run(serve_bridge(settings))
        elif args.command == "up":
            from services.launcher import run_local_stack

            sys.exit(run_local_stack(settings))
        elif args.command == "up-distributed":
            from services.launcher import run_distributed_stack

            sys.exit(run_distributed_stack(settings))
        elif args.command == "demo":
            from services.runner import serve_demo

            asyncio.run(serve_demo(args.target))
        elif args.command == "gateway-config":
            from gateway.envoy_config import write

            print(write(settings, args.out))
    except ConfigError as exc:
        print(f"analytics: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
