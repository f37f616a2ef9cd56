"""Failed-login throttling, kept in the workspace database so every server process and the CLI see it.

Counted per account name (known or not, so a lock tells nothing about which names exist) and per client
address. The first `free` failures cost nothing; each further one locks the key for twice as long as the
one before (1 s, 2 s, 4 s ... up to 15 min). A success clears the account's count (not the address's: one
valid account must not reset the guessing budget for others). Failures are forgotten after a quiet hour.

Mixed into data.store.Workspace through UsersMixin (which provides `db` and `_audit`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

THROTTLE_SCHEMA = """
CREATE TABLE IF NOT EXISTS login_failures (
    kind TEXT NOT NULL CHECK (kind IN ('user', 'client')),
    key TEXT NOT NULL,
    failures INTEGER NOT NULL,
    last_failure TEXT NOT NULL,
    locked_until TEXT,
    PRIMARY KEY (kind, key)
)
"""


@dataclass(frozen=True)
class LoginPolicy:
    free_per_user: int = 5
    free_per_client: int = 20
    first_lock_s: float = 1.0
    max_lock_s: float = 15 * 60
    forget_after_s: float = 3600

    def lock_s(self, failures: int, free: int) -> float:
        if failures < free:
            return 0.0
        return min(self.max_lock_s, self.first_lock_s * 2 ** (failures - free))


POLICY = LoginPolicy()


@dataclass(frozen=True)
class Lockout:
    """Why a login attempt is refused before its password is checked."""

    kind: str  # "user" | "client"
    key: str
    failures: int
    retry_after_s: int

    def message(self) -> str:
        who = f"account {self.key!r} is" if self.kind == "user" else f"logins from {self.key} are"
        unlock = (
            f"slicewise users unlock {self.key}"
            if self.kind == "user"
            else f"slicewise users unlock --client {self.key}"
        )
        return (
            f"{who} locked for {self.retry_after_s} s after {self.failures} failed logins; try again later "
            f"or ask an admin to unlock it ({unlock})"
        )


def _utc(iso: str) -> datetime:
    return datetime.fromisoformat(iso)


class LoginThrottleMixin:
    def _create_throttle_schema(self, con) -> None:
        con.execute(THROTTLE_SCHEMA)

    def login_lockout(self, name: str, client: str | None) -> Lockout | None:
        """The lock that refuses this attempt now (the longest one), or None."""
        current = datetime.now(UTC)
        found = None
        for kind, key in (("user", str(name)), ("client", client)):
            if key is None:
                continue
            row = self.db.one(
                "SELECT failures, locked_until FROM login_failures WHERE kind = ? AND key = ?", (kind, key)
            )
            if row is None or row["locked_until"] is None:
                continue
            left = (_utc(row["locked_until"]) - current).total_seconds()
            if left > 0 and (found is None or left > found.retry_after_s):
                found = Lockout(kind, key, row["failures"], max(1, int(left + 0.999)))
        return found

    def record_login_failure(self, name: str, client: str | None, policy: LoginPolicy = POLICY) -> None:
        current = datetime.now(UTC)
        with self.db.write() as con:
            for kind, key, free in (
                ("user", str(name), policy.free_per_user),
                ("client", client, policy.free_per_client),
            ):
                if key is None:
                    continue
                row = con.execute(
                    "SELECT failures, last_failure FROM login_failures WHERE kind = ? AND key = ?", (kind, key)
                ).fetchone()
                failures = 1
                if row is not None and (current - _utc(row[1])).total_seconds() < policy.forget_after_s:
                    failures = row[0] + 1
                lock_s = policy.lock_s(failures, free)
                locked_until = (
                    (current + timedelta(seconds=lock_s)).isoformat(timespec="milliseconds") if lock_s else None
                )
                con.execute(
                    "INSERT INTO login_failures (kind, key, failures, last_failure, locked_until)"
                    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (kind, key) DO UPDATE SET failures = excluded.failures,"
                    " last_failure = excluded.last_failure, locked_until = excluded.locked_until",
                    (kind, key, failures, current.isoformat(timespec="milliseconds"), locked_until),
                )
                if lock_s:
                    self._audit(
                        con,
                        str(name),
                        "login_locked",
                        {"kind": kind, "key": key, "failures": failures, "seconds": lock_s},
                    )

    def clear_login_failures(self, name: str) -> None:
        with self.db.write() as con:
            con.execute("DELETE FROM login_failures WHERE kind = 'user' AND key = ?", (str(name),))

    def unlock_login(self, name: str | None = None, client: str | None = None, who: str = "local") -> int:
        """Forget the failures of an account name and/or a client address -> how many locks were lifted."""
        lifted = 0
        with self.db.write() as con:
            for kind, key in (("user", name), ("client", client)):
                if key is None:
                    continue
                cur = con.execute("DELETE FROM login_failures WHERE kind = ? AND key = ?", (kind, str(key)))
                lifted += cur.rowcount
                self._audit(con, who, "unlock_login", {"kind": kind, "key": key, "had_failures": bool(cur.rowcount)})
        return lifted

    def login_failures(self) -> list[dict]:
        return self.db.all("SELECT * FROM login_failures ORDER BY kind, key")
