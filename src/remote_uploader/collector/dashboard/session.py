"""Dashboard sessions: a read token signs in once, a signed cookie carries the session after.

The cookie is `<name>.<timestamp>.<signature>` (itsdangerous' `TimestampSigner`, HMAC-SHA256),
where `<name>` is the token's name (URL-safe base64) and the signing key is the stored hash of
that token, mixed with a fixed salt. Why that key rather than a secret of the process:

- every collector process behind a load balancer verifies every other's cookies without a
  secret to distribute: the database they share already holds the key;
- a session ends with its token: `token revoke NAME` or `token add NAME --replace` changes or
  removes the key, so every cookie signed with it fails on the next request, on every process;
- the key is a SHA-256 of 256 random bits, never sent anywhere, so a cookie cannot be forged
  without reading the database (whoever can read it can read the counts anyway; agent and read
  tokens themselves cannot be recovered from it).

The signature is checked with `hmac.compare_digest` (inside itsdangerous); a cookie older than
`session_hours` is refused, so a stolen cookie expires even if its token lives on. The token
typed into the sign-in form is checked by `auth.authenticate` (lookup by hash, constant-time
comparison) and never stored, logged or put in the cookie.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

from itsdangerous import BadSignature, TimestampSigner

from remote_uploader.collector.auth import MAX_TOKEN_LEN, Principal, authenticate
from remote_uploader.collector.storage.base import Storage

COOKIE = "ru_session"
SALT = "remote-uploader dashboard session v1"
MAX_COOKIE_LEN = 1024


def _signer(token_hash: str) -> TimestampSigner:
    return TimestampSigner(token_hash, salt=SALT, digest_method=hashlib.sha256)


def _encode_name(name: str) -> str:
    return base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")


def _decode_name(text: str) -> str | None:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
    except (ValueError, binascii.Error):
        return None


def sign_in(storage: Storage, token: str) -> str | None:
    """The cookie value for a valid read token, or None (the same None whatever was wrong)."""
    if len(token) > MAX_TOKEN_LEN:
        return None
    principal = authenticate(storage, token.strip())
    if principal is None or principal.role != "read":
        return None
    found = storage.token_by_name(principal.name)
    if found is None:  # revoked between the two queries
        return None
    return _signer(found[1]).sign(_encode_name(principal.name)).decode()


def check(storage: Storage, cookie: str | None, max_age_seconds: float) -> Principal | None:
    """Who the session cookie belongs to, or None if it is absent, forged, expired or revoked."""
    if not cookie or len(cookie) > MAX_COOKIE_LEN or cookie.count(".") != 2:
        return None
    encoded = cookie.split(".", 1)[0]
    name = _decode_name(encoded)
    if name is None:
        return None
    found = storage.token_by_name(name)
    if found is None or found[0] != "read":
        return None
    try:
        _signer(found[1]).unsign(cookie, max_age=int(max_age_seconds))
    except BadSignature:  # also SignatureExpired
        return None
    return Principal(name, "read")
