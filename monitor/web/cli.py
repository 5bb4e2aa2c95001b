"""`ood-monitor web hash-password`: make a [web] accounts or tokens entry (the web role itself is
composed in monitor.service.roles)."""

from __future__ import annotations

import argparse
import getpass
import secrets
import sys

from monitor.errors import InputError


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
