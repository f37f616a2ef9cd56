"""Users, API tokens, login sessions and project membership, kept in the workspace database.

Mixed into data.store.Workspace (which provides `db`, `get_project` and `_audit`).

    users    name, role (admin | annotator | viewer), password hash (Argon2id, may be empty; data.passwords)
    tokens   sha256 of the secret only (API tokens and login sessions); the secret is shown once. A login
             session also ends after `idle_s` without a request (last_used) and at its absolute `expires`.
             A role change or removal ends a user's sessions and revokes their API tokens.
    members  (project_id, user): who may see a project (admins see all of them)

No users at all means the server runs without login (local use); see app/auth.py.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import UTC, datetime, timedelta

from data.errors import Conflict, InvalidInput, NotFound
from data.passwords import burn_time, check_password, hash_password, needs_rehash
from data.store_db import now
from data.store_login import LoginThrottleMixin

ROLES = ("viewer", "annotator", "admin")  # each role can do what the ones before it can
USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
TOKEN_PREFIX = "sw_"
MIN_PASSWORD = 8
LAST_USED_GRANULARITY_S = 60  # a session's last_used is rewritten at most this often

USERS_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL CHECK (role IN ('viewer', 'annotator', 'admin')),
    password_hash TEXT,
    created TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS tokens (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    kind TEXT NOT NULL CHECK (kind IN ('api', 'session')),
    token_hash TEXT NOT NULL UNIQUE,
    label TEXT NOT NULL DEFAULT '',
    created TEXT NOT NULL,
    expires TEXT,
    revoked TEXT,
    last_used TEXT
);
CREATE INDEX IF NOT EXISTS tokens_by_user ON tokens(user);

CREATE TABLE IF NOT EXISTS members (
    project_id INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    user TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    created TEXT NOT NULL,
    PRIMARY KEY (project_id, user)
);
"""


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _check_name(name) -> str:
    if not isinstance(name, str) or not USER_NAME.fullmatch(name):
        raise InvalidInput(
            "a user name is 1 to 64 letters, digits, '_', '.', '@' or '-', starting with a "
            f"letter or digit; got {name!r}"
        )
    return name


def _check_role(role) -> str:
    if role not in ROLES:
        raise InvalidInput(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    return role


def _check_password(password) -> str:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD:
        raise InvalidInput(f"a password needs at least {MIN_PASSWORD} characters")
    return password


def _public(user: dict | None) -> dict | None:
    if user is None:
        return None
    out = {k: v for k, v in user.items() if k != "password_hash"}
    out["has_password"] = bool(user.get("password_hash"))
    return out


class UsersMixin(LoginThrottleMixin):
    def _create_users_schema(self) -> None:
        with self.db.write() as con:
            self.db.execute_all(con, USERS_SCHEMA)
            columns = {row[1] for row in con.execute("PRAGMA table_info(tokens)")}
            if "last_used" not in columns:  # a workspace made before idle expiry existed
                con.execute("ALTER TABLE tokens ADD COLUMN last_used TEXT")
            self._create_throttle_schema(con)

    # ---------------------------------------------------------------- users

    def has_users(self) -> bool:
        return self.db.one("SELECT 1 AS x FROM users LIMIT 1") is not None

    def add_user(self, name: str, role: str, password: str | None = None, who: str = "local") -> dict:
        name, role = _check_name(name), _check_role(role)
        hashed = None if password is None else hash_password(_check_password(password))
        with self.db.write() as con:
            if con.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
                raise Conflict(f"a user named {name!r} already exists")
            con.execute(
                "INSERT INTO users (name, role, password_hash, created) VALUES (?, ?, ?, ?)",
                (name, role, hashed, now()),
            )
            self._audit(con, who, "add_user", {"user": name, "role": role})
        return self.get_user(name)

    def get_user(self, name: str) -> dict:
        user = self.db.one("SELECT * FROM users WHERE name = ?", (str(name),))
        if user is None:
            raise NotFound(f"no user named {name!r}")
        return _public(user)

    def list_users(self) -> list[dict]:
        return [_public(u) for u in self.db.all("SELECT * FROM users ORDER BY name")]

    def set_user(self, name: str, role: str | None = None, password: str | None = None, who: str = "local") -> dict:
        before = self.get_user(name)
        role_changed = role is not None and _check_role(role) != before["role"]
        with self.db.write() as con:
            if role is not None:
                con.execute("UPDATE users SET role = ? WHERE name = ?", (role, name))
            if password is not None:
                con.execute(
                    "UPDATE users SET password_hash = ? WHERE name = ?",
                    (hash_password(_check_password(password)), name),
                )
            if password is not None or role_changed:
                con.execute("DELETE FROM tokens WHERE user = ? AND kind = 'session'", (name,))
            if role_changed:  # a token made for the old role must not keep acting under the new one
                con.execute(
                    "UPDATE tokens SET revoked = ? WHERE user = ? AND kind = 'api' AND revoked IS NULL", (now(), name)
                )
            self._audit(
                con,
                who,
                "set_user",
                {"user": name, "role": role, "password_changed": password is not None, "access_revoked": role_changed},
            )
        return self.get_user(name)

    def revoke_user_access(self, name: str, who: str = "local") -> dict:
        """End every login session and revoke every API token of a user -> how many of each."""
        self.get_user(name)
        with self.db.write() as con:
            sessions = con.execute("DELETE FROM tokens WHERE user = ? AND kind = 'session'", (name,)).rowcount
            tokens = con.execute(
                "UPDATE tokens SET revoked = ? WHERE user = ? AND kind = 'api' AND revoked IS NULL", (now(), name)
            ).rowcount
            self._audit(con, who, "revoke_access", {"user": name, "sessions": sessions, "tokens": tokens})
        return {"user": name, "sessions_ended": sessions, "tokens_revoked": tokens}

    def remove_user(self, name: str, who: str = "local") -> None:
        self.get_user(name)
        with self.db.write() as con:
            con.execute("DELETE FROM tokens WHERE user = ?", (name,))
            con.execute("DELETE FROM members WHERE user = ?", (name,))
            con.execute("DELETE FROM users WHERE name = ?", (name,))
            self._audit(con, who, "remove_user", {"user": name})

    def verify_password(self, name: str, password: str) -> dict | None:
        """The user when the password is right, else None (also for unknown users and password-less ones)."""
        user = self.db.one("SELECT * FROM users WHERE name = ?", (str(name),))
        if user is None:
            burn_time(str(password))  # same work either way
            return None
        if not check_password(str(password), user["password_hash"]):
            return None
        if needs_rehash(user["password_hash"]):  # an older scheme: upgrade while the password is at hand
            with self.db.write() as con:
                con.execute(
                    "UPDATE users SET password_hash = ? WHERE name = ? AND password_hash = ?",
                    (hash_password(str(password)), user["name"], user["password_hash"]),
                )
        return _public(user)

    # ---------------------------------------------------------------- tokens and sessions

    def create_token(
        self, name: str, label: str = "", kind: str = "api", ttl_s: float | None = None, who: str = "local"
    ) -> tuple[str, dict]:
        """A new secret for this user -> (the secret, shown once; its row). Only its sha256 is stored."""
        self.get_user(name)
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        expires = None
        if ttl_s is not None:
            expires = (datetime.now(UTC) + timedelta(seconds=ttl_s)).isoformat(timespec="milliseconds")
        with self.db.write() as con:
            cur = con.execute(
                "INSERT INTO tokens (user, kind, token_hash, label, created, expires) VALUES (?, ?, ?, ?, ?, ?)",
                (name, kind, token_hash(secret), str(label)[:200], now(), expires),
            )
            if kind == "api":
                self._audit(con, who, "create_token", {"user": name, "token_id": cur.lastrowid, "label": label})
        return secret, self._token_row(cur.lastrowid)

    def _token_row(self, token_id: int) -> dict:
        row = self.db.one(
            "SELECT id, user, kind, label, created, expires, revoked FROM tokens WHERE id = ?", (int(token_id),)
        )
        if row is None:
            raise NotFound(f"no token with id {token_id}")
        return row

    def list_tokens(self, name: str | None = None) -> list[dict]:
        sql = "SELECT id, user, kind, label, created, expires, revoked FROM tokens WHERE kind = 'api'"
        params: list = []
        if name is not None:
            sql, params = sql + " AND user = ?", [name]
        return self.db.all(sql + " ORDER BY id", params)

    def revoke_token(self, token_id: int, who: str = "local") -> dict:
        row = self._token_row(token_id)
        with self.db.write() as con:
            con.execute("UPDATE tokens SET revoked = ? WHERE id = ? AND revoked IS NULL", (now(), row["id"]))
            self._audit(con, who, "revoke_token", {"user": row["user"], "token_id": row["id"]})
        return self._token_row(row["id"])

    def revoke_user_tokens(self, name: str, who: str = "local") -> int:
        self.get_user(name)
        with self.db.write() as con:
            cur = con.execute("UPDATE tokens SET revoked = ? WHERE user = ? AND revoked IS NULL", (now(), name))
            self._audit(con, who, "revoke_token", {"user": name, "all": True, "count": cur.rowcount})
        return cur.rowcount

    def user_for_token(self, secret: str, kind: str | None = None, idle_s: float | None = None) -> dict | None:
        """The user a valid (not revoked, not expired) token or session secret belongs to, else None.
        With idle_s, a login session unused for longer than that has ended too."""
        if not isinstance(secret, str) or not secret.startswith(TOKEN_PREFIX) or len(secret) > 200:
            return None
        row = self.db.one(
            "SELECT t.id, u.name, u.role, t.kind, t.expires, t.created, t.last_used FROM tokens t"
            " JOIN users u ON u.name = t.user WHERE t.token_hash = ? AND t.revoked IS NULL",
            (token_hash(secret),),
        )
        if row is None or (kind is not None and row["kind"] != kind):
            return None
        current = now()
        if row["expires"] is not None and row["expires"] <= current:
            return None
        if row["kind"] == "session":
            last = datetime.fromisoformat(row["last_used"] or row["created"])
            quiet_s = (datetime.fromisoformat(current) - last).total_seconds()
            if idle_s is not None and quiet_s > idle_s:
                return None
            if quiet_s > LAST_USED_GRANULARITY_S:
                with self.db.write() as con:
                    con.execute("UPDATE tokens SET last_used = ? WHERE id = ?", (current, row["id"]))
        return {"name": row["name"], "role": row["role"], "kind": row["kind"]}

    def end_all_sessions(self, name: str, who: str = "local") -> int:
        """Log a user out everywhere -> how many sessions ended."""
        with self.db.write() as con:
            ended = con.execute("DELETE FROM tokens WHERE user = ? AND kind = 'session'", (str(name),)).rowcount
            self._audit(con, who, "logout_everywhere", {"user": name, "sessions": ended})
        return ended

    def end_session(self, secret: str) -> None:
        with self.db.write() as con:
            con.execute("DELETE FROM tokens WHERE token_hash = ? AND kind = 'session'", (token_hash(str(secret)),))
            con.execute("DELETE FROM tokens WHERE kind = 'session' AND expires <= ?", (now(),))

    # ---------------------------------------------------------------- membership

    def add_member(self, project_id, name: str, who: str = "local") -> dict:
        project_id = self.get_project(project_id)["id"]
        self.get_user(name)
        with self.db.write() as con:
            con.execute(
                "INSERT OR IGNORE INTO members (project_id, user, created) VALUES (?, ?, ?)", (project_id, name, now())
            )
            self._audit(con, who, "add_member", {"project_id": project_id, "user": name})
        return {"project_id": project_id, "user": name}

    def remove_member(self, project_id, name: str, who: str = "local") -> None:
        project_id = self.get_project(project_id)["id"]
        with self.db.write() as con:
            cur = con.execute("DELETE FROM members WHERE project_id = ? AND user = ?", (project_id, str(name)))
            if cur.rowcount == 0:
                raise NotFound(f"{name!r} is not a member of project {project_id}")
            self._audit(con, who, "remove_member", {"project_id": project_id, "user": name})

    def list_members(self, project_id) -> list[dict]:
        project_id = self.get_project(project_id)["id"]
        return self.db.all(
            "SELECT m.user, u.role, m.created FROM members m JOIN users u ON u.name = m.user"
            " WHERE m.project_id = ? ORDER BY m.user",
            (project_id,),
        )

    def is_member(self, project_id: int, name: str) -> bool:
        return (
            self.db.one("SELECT 1 AS x FROM members WHERE project_id = ? AND user = ?", (int(project_id), str(name)))
            is not None
        )

    def member_project_ids(self, name: str) -> set[int]:
        return {r["project_id"] for r in self.db.all("SELECT project_id FROM members WHERE user = ?", (str(name),))}

    # ---------------------------------------------------------------- audit queries

    def query_audit(
        self, who: str | None = None, what: str | None = None, since: str | None = None, limit: int = 100
    ) -> list[dict]:
        sql, params = "SELECT * FROM audit WHERE 1 = 1", []
        for column, value in (("who", who), ("what", what)):
            if value is not None:
                sql, params = sql + f" AND {column} = ?", params + [value]
        if since is not None:
            sql, params = sql + ' AND "when" >= ?', params + [since]
        return self.db.all(sql + " ORDER BY id DESC LIMIT ?", params + [int(limit)])
