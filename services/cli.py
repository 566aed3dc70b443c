"""The `analytics` command: serve services, run the local stack, render the gateway config, mint a
development token."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from libs.config import SERVICE_NAMES, Settings, load_settings, refuse_open_exposure
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
    token = commands.add_parser(
        "token", help="print a development token signed by DATA_DIR/auth/'s key pair (make token)"
    )
    token.add_argument("--tenant", default="default", help="the tenant claim (default: default)")
    token.add_argument(
        "--scopes", default="read write", help='space-separated scopes (default: "read write")'
    )
    token.add_argument("--ttl", type=float, default=3600.0, help="seconds until it expires (default: 3600)")
    token.add_argument("--audience", help="its aud claim (default: the first of AUTH_AUDIENCES, if any)")
    return parser


def _print_token(args: argparse.Namespace, settings: Settings) -> None:
    """`analytics token`: only the token on stdout, so `TOKEN=$(make -s token)` works."""
    from gateway.envoy_config import jwks_source
    from libs.auth_keys import dev_keys, ensure_dev_keys, load_private_key, mint_token

    if args.ttl <= 0:
        raise ConfigError("--ttl: must be more than 0 seconds")
    keys = ensure_dev_keys(settings.data_dir)
    if settings.auth_jwks and Path(jwks_source(settings)) != dev_keys(settings.data_dir).jwks:
        print(
            f"analytics: AUTH_JWKS is {settings.auth_jwks}, not this key pair's {keys.jwks}: "
            "the gateway will refuse this token",
            file=sys.stderr,
        )
    audiences = [a.strip() for a in settings.auth_audiences.split(",") if a.strip()]
    audience = args.audience if args.audience is not None else (audiences[0] if audiences else "")
    print(
        mint_token(
            load_private_key(keys.private_key),
            tenant=args.tenant,
            scopes=args.scopes,
            ttl_seconds=args.ttl,
            audience=audience,
            issuer=settings.auth_issuer,
            tenant_claim=settings.auth_tenant_claim,
            scopes_claim=settings.auth_scopes_claim,
        )
    )


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
        if args.command in ("serve", "bridge", "up", "up-distributed"):
            refuse_open_exposure(settings)
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
        elif args.command == "token":
            _print_token(args, settings)
    except ConfigError as exc:
        print(f"analytics: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
