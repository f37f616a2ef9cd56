"""Password hashes: Argon2id (argon2-cffi's defaults, RFC 9106's second recommended profile) for every new
hash; scrypt hashes written by earlier versions still verify and are replaced at the next successful login.

    stored = hash_password("a long passphrase")
    check_password("a long passphrase", stored)  -> True
    needs_rehash(stored)                          -> False (True for a scrypt or weaker Argon2 hash)
"""

from __future__ import annotations

import hashlib
import hmac

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_HASHER = PasswordHasher()
_DUMMY = _HASHER.hash("a password that no user has")


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def check_password(password: str, stored: str | None) -> bool:
    if not stored:
        return False
    if stored.startswith("scrypt$"):
        return _check_scrypt(password, stored)
    try:
        return _HASHER.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False


def burn_time(password: str) -> None:
    """The work of one verification, for a name with no user: a wrong name takes as long as a wrong password."""
    check_password(password, _DUMMY)


def needs_rehash(stored: str | None) -> bool:
    if not stored:
        return False
    if not stored.startswith("$argon2id$"):
        return True
    try:
        return _HASHER.check_needs_rehash(stored)
    except InvalidHashError:
        return True


def _check_scrypt(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        got = hashlib.scrypt(
            password.encode(),
            salt=bytes.fromhex(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(digest) // 2,
            maxmem=256 * 1024 * 1024,
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got.hex(), digest)
