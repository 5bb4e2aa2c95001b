"""Who is asking, and may they: hashed secrets, signed session cookies, CSRF, roles.

Passwords and API tokens live in the config only as salted scrypt hashes
(`ood-monitor web hash-password` makes one). Browsers hold a signed, expiring session
cookie; API clients send `Authorization: Bearer <token>`. A session is stateless (an
HMAC over its content), so the role is re-read from the config on every request: an
account removed from the config loses access at once, even with a live cookie.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Iterable

ROLES = ("viewer", "labeller", "admin")
ROLE_RANK = {role: rank for rank, role in enumerate(ROLES)}

SESSION_COOKIE = "ood_session"
LOGIN_CSRF_COOKIE = "ood_login_csrf"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"

# scrypt cost: about 50 ms and 16 MiB per check, which makes guessing slow but logins quick.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
_SCRYPT_MAXMEM = 64 * 1024 * 1024


def hash_secret(secret: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """A salted scrypt hash of a password or token: 'scrypt$N$r$p$salt$digest' (base64)."""
    if not secret:
        raise ValueError("cannot hash an empty secret")
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode(), salt=salt, n=n, r=r, p=p, maxmem=_SCRYPT_MAXMEM, dklen=32)
    return "$".join(["scrypt", str(n), str(r), str(p), _b64(salt), _b64(digest)])


def check_hash_format(stored: str) -> None:
    """Raise ValueError naming the problem when `stored` is not a hash made by hash_secret."""
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise ValueError("expected 'scrypt$N$r$p$salt$digest' (make one with `ood-monitor web hash-password`)")
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        _unb64(parts[4]), _unb64(parts[5])
    except (ValueError, TypeError) as error:
        raise ValueError(f"malformed scrypt hash ({error})") from None
    if n < 2 or n & (n - 1) or r < 1 or p < 1:
        raise ValueError("scrypt parameters must be N a power of two >= 2, r >= 1, p >= 1")


def read_credentials(entries: Iterable[str], key: str) -> tuple[list["Credential"], list[str]]:
    """'NAME:ROLE:HASH' entries of [web] accounts / tokens -> the credentials, and every problem
    (each naming the entry, never echoing it: a mistaken entry may hold a plaintext secret)."""
    credentials: list[Credential] = []
    problems: list[str] = []
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        where = f"[web] {key}[{index}]"
        name, sep1, rest = entry.partition(":")
        role, sep2, secret_hash = rest.partition(":")
        name = name.strip()
        if not (sep1 and sep2 and name):
            problems.append(f"{where}: expected 'NAME:ROLE:HASH' (three parts separated by ':'), got "
                            f"{entry.count(':') + 1} part(s)")
            continue
        if role not in ROLES:
            problems.append(f"{where} ({name}): role {role!r} is not one of {', '.join(ROLES)}")
            continue
        if not secret_hash.startswith("scrypt$"):
            problems.append(f"{where} ({name}): expected 'scrypt$N$r$p$salt$digest', the hash printed by "
                            f"`ood-monitor web hash-password --name {name} --role {role}`{' --token' if key == 'tokens' else ''}; "
                            "a plaintext password or token is never accepted")
            continue
        try:
            check_hash_format(secret_hash)
        except ValueError as error:
            problems.append(f"{where} ({name}): {error}")
            continue
        if name in seen:
            problems.append(f"{where}: {name!r} appears twice")
            continue
        seen.add(name)
        credentials.append(Credential(name=name, role=role, secret_hash=secret_hash))
    return credentials, problems


def verify_secret(secret: str, stored: str) -> bool:
    """True when `secret` hashes to `stored`; compares in constant time."""
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        expected = _unb64(digest)
        actual = hashlib.scrypt(
            secret.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p),
            maxmem=_SCRYPT_MAXMEM, dklen=len(expected),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


@dataclass(frozen=True)
class Principal:
    """An authenticated operator (account login) or API client (token)."""

    name: str
    role: str
    via: str  # "session" or "token"
    csrf: str = ""  # the session's CSRF token; empty for bearer tokens, which need none

    def can(self, role: str) -> bool:
        return ROLE_RANK[self.role] >= ROLE_RANK[role]


@dataclass(frozen=True)
class Credential:
    name: str
    role: str
    secret_hash: str


class Authenticator:
    """Checks passwords and tokens against the configured hashes; signs sessions."""

    def __init__(
        self,
        accounts: Iterable[Credential],
        tokens: Iterable[Credential],
        session_secret: bytes,
        session_lifetime_s: float,
    ):
        self.accounts = {account.name: account for account in accounts}
        self.tokens = list(tokens)
        self._key = hashlib.sha256(b"ood-monitor session\0" + session_secret).digest()
        self.session_lifetime_s = float(session_lifetime_s)
        # Tokens that already passed scrypt, keyed by their SHA-256, so each API call does not
        # pay 50 ms; failures are never cached, so guessing stays slow.
        self._verified_tokens: dict[bytes, str] = {}

    # --- accounts and tokens -------------------------------------------------------------
    def login(self, name: str, password: str) -> Credential | None:
        account = self.accounts.get(name)
        if account is None:
            # Spend the same time as a real check so a wrong name is not told apart.
            verify_secret(password, _DUMMY_HASH)
            return None
        return account if verify_secret(password, account.secret_hash) else None

    def is_known_token(self, token: str) -> bool:
        """A token that already passed scrypt in this process (cheap: one SHA-256)."""
        return bool(token) and hashlib.sha256(token.encode()).digest() in self._verified_tokens

    def principal_for_token(self, token: str) -> Principal | None:
        if not token:
            return None
        fingerprint = hashlib.sha256(token.encode()).digest()
        name = self._verified_tokens.get(fingerprint)
        if name is None:
            for credential in self.tokens:
                if verify_secret(token, credential.secret_hash):
                    name = credential.name
                    self._verified_tokens[fingerprint] = name
                    break
        # Re-read the role every time: only tokens still configured count.
        for credential in self.tokens:
            if credential.name == name:
                return Principal(name=credential.name, role=credential.role, via="token")
        return None

    # --- sessions --------------------------------------------------------------------------
    def issue_session(self, name: str, now: float | None = None) -> str:
        issued = time.time() if now is None else now
        payload = {
            "u": name,
            "exp": int(issued + self.session_lifetime_s),
            "csrf": secrets.token_urlsafe(24),
        }
        body = _b64(json.dumps(payload, separators=(",", ":")).encode())
        return f"{body}.{self._sign(body)}"

    def principal_for_session(self, cookie: str | None, now: float | None = None) -> Principal | None:
        if not cookie or "." not in cookie:
            return None
        body, signature = cookie.rsplit(".", 1)
        # Bytes: compare_digest refuses non-ASCII str, and a cookie is whatever the client sends.
        if not hmac.compare_digest(signature.encode(), self._sign(body).encode()):
            return None
        try:
            payload = json.loads(_unb64(body))
            name, expires, csrf = str(payload["u"]), int(payload["exp"]), str(payload["csrf"])
        except (ValueError, KeyError, TypeError):
            return None
        if (time.time() if now is None else now) >= expires:
            return None
        account = self.accounts.get(name)
        if account is None:
            return None
        return Principal(name=account.name, role=account.role, via="session", csrf=csrf)

    def _sign(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest())


class FailureLimiter:
    """Counts failed logins and unknown tokens per client address over a sliding window.

    Each failure costs the server a full scrypt check, so guessing is throttled per address
    (answered 429) rather than left to burn CPU. In memory, per process.
    """

    def __init__(self, max_failures: int, window_s: float = 300.0):
        self.max_failures = max_failures
        self.window_s = window_s
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, key: str, now: float | None = None) -> float:
        """Seconds until `key` may try again; 0 when it may now."""
        now = time.monotonic() if now is None else now
        with self._lock:
            times = self._failures.get(key)
            if not times:
                return 0.0
            while times and times[0] <= now - self.window_s:
                times.popleft()
            if len(times) < self.max_failures:
                return 0.0
            return max(0.0, times[0] + self.window_s - now)

    def failed(self, key: str, now: float | None = None) -> None:
        with self._lock:
            if len(self._failures) > 100_000:  # bound the memory a scan of many addresses can take
                self._failures.clear()
            self._failures.setdefault(key, deque()).append(time.monotonic() if now is None else now)


def csrf_matches(expected: str, presented: str | None) -> bool:
    return bool(expected) and bool(presented) and hmac.compare_digest(expected.encode(), (presented or "").encode())


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# A valid hash of a random secret: login spends a real scrypt even for unknown names.
_DUMMY_HASH = hash_secret(secrets.token_urlsafe(16))
