"""The `slicewise` command: serve the app, import volumes into a workspace, train and predict offline."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from app.settings import DEVICES, Settings, SettingsError

DELEGATED = {"train": "train a model from image/label folders", "predict": "predict masks with a trained model"}


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slicewise",
        description="Paint a few slices, press Retrain, get a 3D segmentation.",
    )
    sub = parser.add_subparsers(dest="command", metavar="{serve,import,train,predict}")

    serve = sub.add_parser("serve", help="run the web app (API at /api, docs at /docs)")
    serve.add_argument("--workspace", type=Path, help="workspace folder (SQLite + files); default ./workspace or $SLICEWISE_WORKSPACE")
    serve.add_argument("--host", help="interface to bind; default 127.0.0.1")
    serve.add_argument("--port", type=int, help="default 8000")
    serve.add_argument("--device", choices=DEVICES, help="where inference and training run; default auto (CUDA when present)")
    serve.add_argument("--no-demo", action="store_true", help="do not create the demo project in an empty workspace")
    serve.set_defaults(handler=_serve)

    imp = sub.add_parser("import", help="import volumes into a project of a workspace (no server needed)")
    imp.add_argument("--workspace", type=Path, help="workspace folder; default ./workspace or $SLICEWISE_WORKSPACE")
    imp.add_argument("--project", required=True, help="project name; created when missing (then --label is needed)")
    imp.add_argument("--label", action="append", default=[], metavar="VALUE:NAME:#RRGGBB",
                     help="a label of a new project, e.g. 1:anterior:#e6194b (repeat for each label)")
    imp.add_argument("files", nargs="+", type=Path, help=".nii/.nii.gz files or .zip files of one DICOM series")
    imp.set_defaults(handler=_import)

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

    settings = Settings.from_env(workspace=args.workspace, host=args.host, port=args.port, device=args.device)
    if args.no_demo:
        settings = settings.with_overrides(demo=False)
    _configure_logging(settings.log_level)
    logging.getLogger("slicewise").info("serving on %s (workspace %s)", settings.base_url, settings.workspace)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level.lower())
    return 0


def _parse_label(text: str) -> dict:
    try:
        value, name, color = text.split(":", 2)
        return {"value": int(value), "name": name, "color": color}
    except ValueError:
        raise SystemExit(f"slicewise import: --label must look like 1:anterior:#e6194b, got {text!r}") from None


def _import(args: argparse.Namespace) -> int:
    from app.schemas import ProjectCreate
    from data.errors import SlicewiseError
    from data.store import Workspace

    settings = Settings.from_env(workspace=args.workspace)
    ws = Workspace(settings.workspace)
    project = next((p for p in ws.list_projects() if p["name"] == args.project), None)
    if project is None:
        if not args.label:
            print(f"slicewise import: project {args.project!r} does not exist; give its labels with --label "
                  "VALUE:NAME:#RRGGBB to create it", file=sys.stderr)
            return 2
        try:
            body = ProjectCreate(name=args.project, labels=[_parse_label(t) for t in args.label])
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
        print(f"{path}: volume {volume['id']} in project {project['id']} ({project['name']}), "
              f"shape {tuple(volume['shape'])}, spacing {tuple(round(s, 3) for s in volume['spacing'])}")
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
