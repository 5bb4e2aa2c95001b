"""`ood-monitor web`: serve the operator app alone; `ood-monitor web hash-password`: make a config hash."""

from __future__ import annotations

import argparse
import getpass
import secrets
import sys

from monitor.errors import InputError


def run_web_command(args: argparse.Namespace) -> int:
    if getattr(args, "web_action", None) == "hash-password":
        return hash_password_command(args)
    return serve_command(args)


def serve_command(args: argparse.Namespace) -> int:
    import uvicorn

    from monitor.preflight import preflight
    from monitor.store import Store
    from monitor.web import create_app

    settings = preflight(args.config, database=True)
    host = args.host or settings.web.host
    port = settings.web.port if args.port is None else args.port
    store = Store.open(settings.store.url, upgrade_sqlite=settings.store.auto_upgrade_sqlite,
                       connect_timeout_s=settings.store.connect_timeout_s)
    try:
        app = create_app(settings, store)
        print(f"ood-monitor web: serving on http://{host}:{port}/ (Ctrl-C to stop)", file=sys.stderr)
        uvicorn.run(app, host=host, port=port, log_level=settings.logging.level.lower(), proxy_headers=True)
    finally:
        store.close()
    return 0


def hash_password_command(args: argparse.Namespace) -> int:
    from monitor.web.auth import ROLES, hash_secret

    if args.role not in ROLES:
        raise InputError(f"--role: {args.role!r} is not one of {', '.join(ROLES)}")
    if ":" in args.name or not args.name.strip():
        raise InputError(f"--name: {args.name!r} must be non-empty and contain no ':'")
    if args.new_token:
        secret = secrets.token_urlsafe(32)
        print(f"token (give it to the client, it is shown once): {secret}", file=sys.stderr)
        key = "tokens"
    else:
        if args.stdin:
            secret = sys.stdin.readline().rstrip("\r\n")
        else:
            secret = getpass.getpass("password: ")
            if getpass.getpass("again: ") != secret:
                raise InputError("the two passwords differ")
        if len(secret) < 8:
            raise InputError("the password must have at least 8 characters")
        key = "tokens" if args.token else "accounts"
    entry = f"{args.name}:{args.role}:{hash_secret(secret)}"
    print(f"# add to [web] {key} in the config file (or MONITOR_WEB__{key.upper()}, comma-separated):", file=sys.stderr)
    print(entry)
    return 0
