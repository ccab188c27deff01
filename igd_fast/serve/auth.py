"""API keys: where they come from (a file or the environment), how a request shows one
(``X-API-Key: KEY`` or ``Authorization: Bearer KEY``), and the rule that a server without
keys listens on loopback only."""

from __future__ import annotations

import hmac
import ipaddress
import os
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path

from .errors import ApiError

KEY_ENV = "IGD_FAST_API_KEY"
MIN_KEY_LENGTH = 16


class ApiKeyError(ValueError):
    """No usable key: the message says where one was looked for."""


def load_keys(key_file: str | Path | None, env: Mapping[str, str] = os.environ) -> tuple[str, ...]:
    """The accepted keys: one per non-empty line of ``key_file`` (lines starting with # are
    comments), else the value of $IGD_FAST_API_KEY. Each at least 16 characters."""
    if key_file is not None:
        try:
            text = Path(key_file).read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise ApiKeyError(f"cannot read the API key file {key_file}: {e}") from None
        keys = tuple(ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#"))
        where = f"the API key file {key_file}"
    else:
        keys = (env.get(KEY_ENV, "").strip(),) if env.get(KEY_ENV, "").strip() else ()
        where = f"${KEY_ENV}"
    if not keys:
        raise ApiKeyError(f"no API key: {where} holds none (give --api-key-file FILE or set {KEY_ENV}; "
                        "--no-auth serves without one, on a loopback address only)")  # fmt: skip
    short = [i + 1 for i, k in enumerate(keys) if len(k) < MIN_KEY_LENGTH]
    if short:
        raise ApiKeyError(f"{where}: key {short[0]} is shorter than {MIN_KEY_LENGTH} characters (use e.g. "
                        "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`)")  # fmt: skip
    return keys


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key a request carries, if any."""
    key = headers.get("x-api-key")
    if key:
        return key.strip()
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def check_key(headers: Mapping[str, str], keys: Sequence[str]) -> None:
    """ApiError 401 unless the request carries one of ``keys`` (compared in constant time)."""
    given = presented_key(headers)
    ok = given is not None and any(hmac.compare_digest(given.encode(), k.encode()) for k in keys)
    if not ok:
        why = "no API key given" if given is None else "the API key is not valid"
        raise ApiError(401, "unauthorized", f"{why}: send it as X-API-Key: KEY or Authorization: Bearer KEY",
                       {"WWW-Authenticate": "Bearer"})  # fmt: skip


def is_loopback(host: str) -> bool:
    """True when every address ``host`` resolves to is a loopback one (127.0.0.0/8, ::1)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)
