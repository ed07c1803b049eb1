"""API keys: ``farm_<prefix>_<secret>``. The prefix (8 characters, public) finds the key's row; the
ledger keeps only HMAC-SHA256(server secret, key), compared in constant time, so a copy of the
ledger holds no usable key. A key is shown once, when it is made."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from farm.errors import InputError
from farm.jobs.values import parse_duration

SCOPES = ("submit", "read", "admin")
KEY_RE = re.compile(r"^farm_([a-z0-9]{8})_([A-Za-z0-9_-]{43})$")
MAX_EXPIRY = timedelta(days=3650)


@dataclass(frozen=True)
class NewKey:
    key: str  # shown once
    prefix: str
    key_hash: str


@dataclass(frozen=True)
class Principal:
    """Who a request is: the key's tenant and scopes (admin sees every tenant)."""

    tenant: str
    scopes: frozenset[str]
    prefix: str

    @property
    def admin(self) -> bool:
        return "admin" in self.scopes

    def may(self, scope: str) -> bool:
        return scope in self.scopes or self.admin


def key_hash(secret: bytes, key: str) -> str:
    return hmac.new(secret, key.encode(), hashlib.sha256).hexdigest()


def new_key(secret: bytes) -> NewKey:
    prefix = "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(8))
    key = f"farm_{prefix}_{secrets.token_urlsafe(32)}"
    return NewKey(key, prefix, key_hash(secret, key))


def key_prefix(key: str) -> str | None:
    """The prefix of a well-formed key, or None (an answer that says nothing about why)."""
    match = KEY_RE.match(key or "")
    return match.group(1) if match else None


def matches(secret: bytes, key: str, stored_hash: str) -> bool:
    return hmac.compare_digest(key_hash(secret, key), stored_hash)


def parse_scopes(text: object) -> frozenset[str]:
    """``submit,read[,admin]``; at least one, each known."""
    if not isinstance(text, str) or not text.strip():
        raise InputError("scopes", f"expected a comma list of {', '.join(SCOPES)}")
    scopes = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown:
        raise InputError("scopes", f"unknown scope {unknown[0]!r} (known: {', '.join(SCOPES)})")
    return frozenset(scopes)


def parse_expiry(text: object, now: datetime) -> datetime | None:
    """``30d``, ``12h``, ``15m``, ``900`` (seconds) from ``now``; None or "never" for no expiry."""
    if text is None or (isinstance(text, str) and text.strip().lower() == "never"):
        return None
    seconds = parse_duration("expires", str(text).strip().lower(), 60, int(MAX_EXPIRY.total_seconds()),
                             examples="30d, 12h or 900", bounds="1m..3650d")
    return now + timedelta(seconds=seconds)
