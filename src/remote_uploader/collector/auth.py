"""Bearer tokens: made here, stored as hashes, compared in constant time, never logged.

A token is 32 random bytes from `secrets` (256 bits), URL-safe base64, with a `ru_` prefix so
that it is recognisable in a leaked file. The database keeps only its SHA-256. A fast unsalted
hash is enough for a secret of this entropy: salts and slow hashes (bcrypt, argon2) exist to
stop guessing of low-entropy passwords, and guessing a 256-bit random value is hopeless however
fast the hash is. A stolen database therefore yields no usable token.

Roles: an `agent` token may send batches (as the agent of the same name) and read; a `read`
token may only read (for firewalls pulling blocklists, dashboards).

Bouncer keys (`rub_` prefix) are a third kind, kept in their own table: CrowdSec bouncers send
them in `X-Api-Key` to pull decisions, and they can do nothing else; tokens cannot pull
decisions. Made, hashed and compared the same way.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from remote_uploader.collector.storage.base import BouncerInfo, Role, Storage
from remote_uploader.errors import BouncerError, TokenError
from remote_uploader.protocol import MAX_AGENT_LEN

PREFIX = "ru_"
BOUNCER_PREFIX = "rub_"
MAX_TOKEN_LEN = 512  # anything longer is not one of ours; do not even hash it
# Token names are agent ids (host names by default): printable ASCII without spaces or slashes.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:+-]*")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who made a request: the token's name and role."""

    name: str
    role: Role


def new_token() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def check_name(name: str) -> None:
    if len(name) > MAX_AGENT_LEN or not _NAME.fullmatch(name):
        raise TokenError(
            name,
            f"a name is 1 to {MAX_AGENT_LEN} characters: letters, digits and . _ @ : + - "
            "(starting with a letter or digit)",
        )


def create_token(storage: Storage, name: str, role: Role = "agent", *, replace: bool = False) -> str:
    """Store the hash of a new token for `name` and return the token (shown to the user once)."""
    check_name(name)
    token = new_token()
    storage.add_token(name, hash_token(token), role, replace=replace)
    return token


def authenticate(storage: Storage, token: str) -> Principal | None:
    """The principal a presented token belongs to, or None.

    The lookup is by hash, so what an attacker could time is a search for the hash of their own
    guess, which tells them nothing about stored tokens; the final `compare_digest` makes the
    match itself constant-time as well.
    """
    if not token or len(token) > MAX_TOKEN_LEN:
        return None
    presented = hash_token(token)
    found = storage.find_token(presented)
    if found is None:
        return None
    name, role, stored = found
    if not hmac.compare_digest(stored.encode(), presented.encode()):
        return None
    return Principal(name, role)


def create_bouncer_key(storage: Storage, name: str, *, replace: bool = False) -> str:
    """Store the hash of a new bouncer key for `name` and return the key (shown to the user once)."""
    try:
        check_name(name)
    except TokenError as exc:
        raise BouncerError(name, exc.reason) from None
    key = BOUNCER_PREFIX + secrets.token_urlsafe(32)
    storage.add_bouncer(name, hash_token(key), replace=replace)
    return key


def authenticate_bouncer(storage: Storage, key: str) -> BouncerInfo | None:
    """The bouncer a presented key belongs to, or None (see `authenticate` on timing)."""
    if not key or len(key) > MAX_TOKEN_LEN:
        return None
    presented = hash_token(key)
    found = storage.find_bouncer(presented)
    if found is None:
        return None
    bouncer, stored = found
    if not hmac.compare_digest(stored.encode(), presented.encode()):
        return None
    return bouncer
