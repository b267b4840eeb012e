"""The `chatkit-gateway` command: it only turns flags into a `GatewayConfig` and runs it."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from . import __version__
from .config import ConfigError, GatewayConfig, load_config, redacted

__all__ = ["main"]

EXIT_CONFIG_ERROR = 2


def _load(args: argparse.Namespace) -> GatewayConfig:
    return load_config(args.config)


def _serve(args: argparse.Namespace) -> int:
    config = _load(args)
    if args.host is not None or args.port is not None:
        server = config.server.model_copy(
            update={k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
        )
        config = config.model_copy(update={"server": server})
    from .server import run

    return run(config)


def _check_config(args: argparse.Namespace) -> int:
    config = _load(args)
    print(json.dumps(redacted(config), indent=2))
    return 0


def _demo(args: argparse.Namespace) -> int:
    try:
        # The demo's backend needs the optional `openai-chatkit`; the gateway itself does not.
        from .demo import run_demo
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] not in ("chatkit", "agents", "openai"):
            raise
        print(f"chatkit-gateway demo needs openai-chatkit ({exc}); install chatkit-gateway[demo]", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    return run_demo(args.host, args.port)


def _version(args: argparse.Namespace) -> int:
    print(f"chatkit-gateway {__version__}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chatkit-gateway", description="An authenticating reverse proxy for the OpenAI ChatKit protocol."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def with_config(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--config", metavar="PATH", help="TOML config file (default: $CHATKIT_GATEWAY_CONFIG, else none)"
        )

    serve = commands.add_parser("serve", help="run the gateway")
    with_config(serve)
    serve.add_argument("--host", help="override server.host")
    serve.add_argument("--port", type=int, help="override server.port")
    serve.set_defaults(handler=_serve)

    check = commands.add_parser("check-config", help="print the effective config, secrets redacted")
    with_config(check)
    check.set_defaults(handler=_check_config)

    demo = commands.add_parser("demo", help="run the embedded demo: identity provider, ChatKit backend, gateway, page")
    demo.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    demo.add_argument("--port", type=int, default=8000, help="port of the demo page and gateway (default: 8000)")
    demo.set_defaults(handler=_demo)

    version = commands.add_parser("version", help="print the version")
    version.set_defaults(handler=_version)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.handler(args)
    except ConfigError as exc:
        print(f"chatkit-gateway: configuration error\n{exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    except KeyboardInterrupt:
        return 130
    return result


if __name__ == "__main__":
    logging.basicConfig()
    sys.exit(main())
