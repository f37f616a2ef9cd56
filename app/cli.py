"""The `slicewise` command: serve the app, import volumes into a workspace, train and predict offline."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from app.settings import RUNNERS, Settings, SettingsError
from data.store_users import ROLES
from model.config import DEVICES

DELEGATED = {"train": "train a model from image/label folders", "predict": "predict masks with a trained model"}


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slicewise",
        description="Paint a few slices, press Retrain, get a 3D segmentation.",
    )
    sub = parser.add_subparsers(dest="command", metavar="{serve,import,users,tokens,members,train,predict}")

    serve = sub.add_parser("serve", help="run the web app (API at /api, docs at /docs)")
    serve.add_argument(
        "--workspace", type=Path, help="workspace folder (SQLite + files); default ./workspace or $SLICEWISE_WORKSPACE"
    )
    serve.add_argument("--host", help="interface to bind; default 127.0.0.1")
    serve.add_argument("--port", type=int, help="default 8000")
    serve.add_argument(
        "--device", choices=DEVICES, help="where inference and training run; default auto (CUDA when present)"
    )
    serve.add_argument(
        "--runner",
        choices=RUNNERS,
        help="where training jobs run: local (a subprocess per job, the default) or ray (a Ray cluster, "
        "see --ray-address); default $SLICEWISE_RUNNER",
    )
    serve.add_argument(
        "--ray-address",
        metavar="HOST:PORT",
        help="the Ray cluster's head (GCS) address for --runner ray; default $SLICEWISE_RAY_ADDRESS",
    )
    serve.add_argument("--no-demo", action="store_true", help="do not create the demo project in an empty workspace")
    serve.add_argument(
        "--dicomweb",
        action="append",
        metavar="NAME=URL",
        help="a DICOMweb server (PACS) users may search, import from and send masks to; repeatable; "
        "default $SLICEWISE_DICOMWEB (comma-separated)",
    )
    serve.add_argument(
        "--dicomweb-credentials",
        type=Path,
        metavar="FILE",
        help='JSON file {"NAME": {"username": ..., "password": ...} or {"token": ...}}; '
        "default $SLICEWISE_DICOMWEB_CREDENTIALS",
    )
    serve.add_argument(
        "--setup-token",
        action="store_true",
        help="first start without users on a public address: create user 'admin' and print a "
        "one-time API token (or set SLICEWISE_ADMIN_PASSWORD_FILE); see docs/deployment.md",
    )
    serve.set_defaults(handler=_serve)

    imp = sub.add_parser("import", help="import volumes into a project of a workspace (no server needed)")
    imp.add_argument("--workspace", type=Path, help="workspace folder; default ./workspace or $SLICEWISE_WORKSPACE")
    imp.add_argument("--project", required=True, help="project name; created when missing (then --label is needed)")
    imp.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="VALUE:NAME:#RRGGBB",
        help="a label of a new project, e.g. 1:anterior:#e6194b or 'anterior' (repeat for each label; "
        "value and colour default as in the UI's label box)",
    )
    imp.add_argument("files", nargs="+", type=Path, help=".nii/.nii.gz files or .zip files of one DICOM series")
    imp.set_defaults(handler=_import)

    _add_access_commands(sub)

    # train/predict live in model/cli.py, imported only when used (main() hands them their arguments
    # untouched); listed here so that `slicewise --help` shows them
    for name, help_text in DELEGATED.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.main import create_app

    settings = Settings.from_env(
        workspace=args.workspace,
        host=args.host,
        port=args.port,
        device=args.device,
        dicomweb=tuple(args.dicomweb) if args.dicomweb else None,
        dicomweb_credentials=args.dicomweb_credentials,
        runner=args.runner,
        ray_address=args.ray_address,
    )
    if args.no_demo:
        settings = settings.with_overrides(demo=False)
    _configure_logging(settings.log_level)
    from app.auth import is_loopback
    from app.first_run import make_initial_admin

    if not is_loopback(settings.host):
        make_initial_admin(settings, setup_token=args.setup_token)
    if not _may_serve(settings):
        return 2
    logging.getLogger("slicewise").info("serving on %s (workspace %s)", settings.base_url, settings.workspace)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level.lower())
    return 0


def _may_serve(settings: Settings) -> bool:
    """Loopback without users: no login (local use). Any other address needs users (auth on)."""
    from app.auth import HOW_TO_CONFIGURE, is_loopback

    if is_loopback(settings.host):
        return True
    if (settings.workspace / "slicewise.db").exists():
        from data.store import Workspace

        ws = Workspace(settings.workspace)
        try:
            if ws.has_users():
                return True
        finally:
            ws.close()
    print(
        f"slicewise serve: refusing to listen on {settings.host}: this workspace has no users, so anyone who "
        f"can reach the port could read and change everything.\nTo serve beyond this machine, "
        f"{HOW_TO_CONFIGURE.replace('WORKSPACE', str(settings.workspace))}\n"
        "Or serve on 127.0.0.1 (the default) for local use without login.",
        file=sys.stderr,
    )
    return False


# ------------------------------------------------------------------ users, tokens, members


def _add_access_commands(sub) -> None:
    def workspace_arg(p):
        p.add_argument("--workspace", type=Path, help="workspace folder; default ./workspace or $SLICEWISE_WORKSPACE")

    users = sub.add_parser("users", help="manage users (adding the first one turns login on)")
    users_sub = users.add_subparsers(dest="action", metavar="{add,list,set,remove,unlock,revoke}", required=True)
    add = users_sub.add_parser("add", help="add a user")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=ROLES)
    add.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password (for the /login page) from the first line of stdin; "
        "without it the user logs in with API tokens only",
    )
    workspace_arg(add)
    lst = users_sub.add_parser("list", help="list users")
    workspace_arg(lst)
    st = users_sub.add_parser("set", help="change a user's role and/or password")
    st.add_argument("name")
    st.add_argument("--role", choices=ROLES)
    st.add_argument("--password-stdin", action="store_true")
    workspace_arg(st)
    rm = users_sub.add_parser("remove", help="remove a user with their tokens and memberships")
    rm.add_argument("name")
    workspace_arg(rm)
    un = users_sub.add_parser("unlock", help="lift the lock that failed logins put on an account or --client address")
    un.add_argument("name", nargs="?")
    un.add_argument("--client", help="a client address locked for too many failed logins")
    workspace_arg(un)
    rv = users_sub.add_parser("revoke", help="log a user out everywhere and revoke all their API tokens")
    rv.add_argument("name")
    workspace_arg(rv)
    users.set_defaults(handler=_users)

    tokens = sub.add_parser("tokens", help="manage API tokens (hashed at rest; shown once)")
    tokens_sub = tokens.add_subparsers(dest="action", metavar="{create,list,revoke}", required=True)
    create = tokens_sub.add_parser("create", help="create a token for a user and print it once")
    create.add_argument("name")
    create.add_argument("--label", default="", help="what the token is for, e.g. 'laptop script'")
    workspace_arg(create)
    tl = tokens_sub.add_parser("list", help="list tokens (never their secrets)")
    tl.add_argument("name", nargs="?")
    workspace_arg(tl)
    rv = tokens_sub.add_parser("revoke", help="revoke a token by id (see tokens list), or all of --user's")
    rv.add_argument("token_id", nargs="?", type=int)
    rv.add_argument("--user", help="revoke every token of this user")
    workspace_arg(rv)
    tokens.set_defaults(handler=_tokens)

    members = sub.add_parser("members", help="manage project membership (who sees a project; admins see all)")
    members_sub = members.add_subparsers(dest="action", metavar="{add,list,remove}", required=True)
    for action, help_text in (("add", "make a user a member of a project"), ("remove", "remove a user from a project")):
        p = members_sub.add_parser(action, help=help_text)
        p.add_argument("project_id", type=int)
        p.add_argument("name")
        workspace_arg(p)
    ml = members_sub.add_parser("list", help="list a project's members")
    ml.add_argument("project_id", type=int)
    workspace_arg(ml)
    members.set_defaults(handler=_members)


def _open_workspace(args):
    from data.store import Workspace

    return Workspace(Settings.from_env(workspace=args.workspace).workspace)


def _read_password() -> str:
    line = sys.stdin.readline().rstrip("\r\n")
    if not line:
        raise SystemExit("slicewise: --password-stdin: no password on stdin")
    return line


def _run_access(fn) -> int:
    from data.errors import SlicewiseError

    try:
        fn()
    except SlicewiseError as exc:
        print(f"slicewise: {exc}", file=sys.stderr)
        return 2
    return 0


def _users(args) -> int:
    ws = _open_workspace(args)

    def run():
        if args.action == "add":
            first = not ws.has_users()
            password = _read_password() if args.password_stdin else None
            user = ws.add_user(args.name, args.role, password, who="cli")
            print(
                f"user {user['name']} ({user['role']}) added"
                + (
                    ""
                    if password
                    else f"; no password: create an API token with `slicewise tokens create {user['name']}`"
                )
            )
            if first:
                print("this is the first user: login is now required on every address", file=sys.stderr)
        elif args.action == "list":
            for user in ws.list_users():
                print(
                    f"{user['name']}\t{user['role']}\t{'password' if user['has_password'] else 'tokens only'}"
                    f"\t{user['created']}"
                )
        elif args.action == "set":
            password = _read_password() if args.password_stdin else None
            user = ws.set_user(args.name, role=args.role, password=password, who="cli")
            print(f"user {user['name']} ({user['role']}) updated")
        elif args.action == "remove":
            ws.remove_user(args.name, who="cli")
            print(f"user {args.name} removed")
        elif args.action == "unlock":
            if not args.name and not args.client:
                raise SystemExit("slicewise users unlock: give a user name and/or --client ADDRESS")
            lifted = ws.unlock_login(name=args.name, client=args.client, who="cli")
            print(f"{'unlocked' if lifted else 'was not locked'}: {args.name or args.client}")
        elif args.action == "revoke":
            done = ws.revoke_user_access(args.name, who="cli")
            print(f"{args.name}: {done['sessions_ended']} session(s) ended, {done['tokens_revoked']} token(s) revoked")

    return _run_access(run)


def _tokens(args) -> int:
    ws = _open_workspace(args)

    def run():
        if args.action == "create":
            secret, row = ws.create_token(args.name, label=args.label, who="cli")
            print(secret)
            print(
                f"token {row['id']} for {row['user']}: shown once, store it now (only its hash is kept). "
                "Send it as 'Authorization: Bearer <token>'.",
                file=sys.stderr,
            )
        elif args.action == "list":
            for row in ws.list_tokens(args.name):
                state = f"revoked {row['revoked']}" if row["revoked"] else "active"
                print(f"{row['id']}\t{row['user']}\t{state}\t{row['created']}\t{row['label']}")
        elif args.action == "revoke":
            if args.user:
                print(f"revoked {ws.revoke_user_tokens(args.user, who='cli')} token(s) of {args.user}")
            elif args.token_id is not None:
                row = ws.revoke_token(args.token_id, who="cli")
                print(f"token {row['id']} of {row['user']} revoked")
            else:
                raise SystemExit("slicewise tokens revoke: give a token id or --user NAME")

    return _run_access(run)


def _members(args) -> int:
    ws = _open_workspace(args)

    def run():
        if args.action == "add":
            ws.add_member(args.project_id, args.name, who="cli")
            print(f"{args.name} is a member of project {args.project_id}")
        elif args.action == "remove":
            ws.remove_member(args.project_id, args.name, who="cli")
            print(f"{args.name} removed from project {args.project_id}")
        else:
            for member in ws.list_members(args.project_id):
                print(f"{member['user']}\t{member['role']}\t{member['created']}")

    return _run_access(run)


def _import(args: argparse.Namespace) -> int:
    from app.schemas import ProjectCreate
    from data.errors import InvalidInput, SlicewiseError
    from data.label_text import parse_label_text
    from data.store import Workspace

    settings = Settings.from_env(workspace=args.workspace)
    ws = Workspace(settings.workspace)
    project = next((p for p in ws.list_projects() if p["name"] == args.project), None)
    if project is None:
        if not args.label:
            print(
                f"slicewise import: project {args.project!r} does not exist; give its labels with --label "
                "VALUE:NAME:#RRGGBB to create it",
                file=sys.stderr,
            )
            return 2
        try:
            body = ProjectCreate(name=args.project, labels=parse_label_text("\n".join(args.label)))
        except InvalidInput as exc:
            print(f"slicewise import: --label: {exc}", file=sys.stderr)
            return 2
        except ValueError as exc:
            print(f"slicewise import: {exc}", file=sys.stderr)
            return 2
        project = ws.create_project(body.name, [label.model_dump() for label in body.labels])
    failures = 0
    for path in args.files:
        try:
            volume = ws.import_volume(project["id"], path, path.name, settings.max_expanded_bytes)
        except (SlicewiseError, OSError) as exc:
            failures += 1
            print(f"{path}: not imported: {exc}", file=sys.stderr)
            continue
        print(
            f"{path}: volume {volume['id']} in project {project['id']} ({project['name']}), "
            f"shape {tuple(volume['shape'])}, spacing {tuple(round(s, 3) for s in volume['spacing'])}"
        )
    return 1 if failures else 0


def _delegate(name: str, argv: list[str]) -> int:
    """`slicewise train|predict ...` -> model.cli's add_<name>_args / run_<name>."""
    try:
        from model import cli as model_cli
    except ImportError as exc:
        print(f"slicewise {name}: not available in this installation ({exc})", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog=f"slicewise {name}", description=DELEGATED[name])
    getattr(model_cli, f"add_{name}_args")(parser)
    result = getattr(model_cli, f"run_{name}")(parser.parse_args(argv))
    return int(result or 0)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in DELEGATED:
        return _delegate(argv[0], argv[1:])
    parser = _build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 2
    try:
        return args.handler(args)
    except SettingsError as exc:
        print(f"slicewise: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
