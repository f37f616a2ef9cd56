"""The first start of a workspace without users on a non-loopback address (a container): make the
initial admin instead of refusing to serve.

- `SLICEWISE_ADMIN_PASSWORD_FILE` (e.g. a Docker secret at /run/secrets/...): user `admin` with the
  password on the file's first line;
- else, with `slicewise serve --setup-token`: user `admin` without a password and a one-time API token,
  printed once to the server's log and valid for 24 hours, to set a password and create the other users.

Nothing happens once the workspace has a user; the file and the flag are then ignored.
"""

from __future__ import annotations

import sys

from app.settings import Settings

ADMIN = "admin"
SETUP_TOKEN_TTL_S = 24 * 3600


def read_password_file(settings: Settings) -> str:
    path = settings.admin_password_file
    try:
        password = path.read_text(encoding="utf-8").splitlines()[0] if path.stat().st_size else ""
    except (OSError, UnicodeDecodeError) as exc:
        raise SystemExit(f"slicewise serve: cannot read SLICEWISE_ADMIN_PASSWORD_FILE {path}: {exc}") from None
    return password


def make_initial_admin(settings: Settings, setup_token: bool) -> bool:
    """Create the initial admin when there is a way to -> whether the workspace now has a user."""
    from data.errors import SlicewiseError
    from data.store import Workspace

    if settings.admin_password_file is None and not setup_token:
        return False
    ws = Workspace(settings.workspace)
    try:
        if ws.has_users():
            return True
        if settings.admin_password_file is not None:
            try:
                ws.add_user(ADMIN, "admin", read_password_file(settings), who="first-run")
            except SlicewiseError as exc:
                raise SystemExit(f"slicewise serve: SLICEWISE_ADMIN_PASSWORD_FILE: {exc}") from None
            print(
                f"slicewise: first start: created the admin user {ADMIN!r} with the password of "
                f"{settings.admin_password_file}; log in at /login",
                file=sys.stderr,
            )
            return True
        ws.add_user(ADMIN, "admin", None, who="first-run")
        secret, _ = ws.create_token(ADMIN, label="first-run setup token", ttl_s=SETUP_TOKEN_TTL_S, who="first-run")
        print(
            "slicewise: first start: created the admin user 'admin' and this one-time setup token, valid for 24 h "
            "and shown only now:\n\n"
            f"    {secret}\n\n"
            "Give 'admin' a password with it, then log in at /login (and revoke the token there):\n"
            "    curl -X PATCH http://HOST:8000/api/users/admin -H 'Authorization: Bearer <token>' \\\n"
            "         -H 'Content-Type: application/json' -d '{\"password\": \"a long passphrase\"}'",
            file=sys.stderr,
            flush=True,
        )
        return True
    finally:
        ws.close()
