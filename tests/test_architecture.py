"""The layers of docs/architecture.md, checked by parsing every import: absolute and relative ones, lazy ones
inside functions, `importlib.import_module("...")` / `__import__("...")` with a literal name, at any depth of
dotted name; and what app/ may import from model/ is followed through model/'s own imports."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DYNAMIC = {"import_module", "__import__"}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(node: ast.ImportFrom, here: str, is_package: bool) -> str:
    """The absolute module an `from ... import` names, relative ones resolved against the importing module."""
    if node.level == 0:
        return node.module or ""
    base = here.split(".") if is_package else here.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
    return ".".join([*base, *([node.module] if node.module else [])])


def _dynamic_name(node: ast.Call) -> str | None:
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    if name in DYNAMIC and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
        return node.args[0].value
    return None


def imports_of(path: Path, root: Path) -> set[str]:
    here, is_package = module_name(path, root), path.name == "__init__.py"
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = _resolve(node, here, is_package)
            if module:
                names.add(module)
            names.update(f"{module}.{alias.name}" if module else alias.name for alias in node.names)
        elif isinstance(node, ast.Call) and (name := _dynamic_name(node)):
            names.add(name)
    return names


def imported_modules(package: str) -> dict[str, set[str]]:
    return {str(path.relative_to(ROOT)): imports_of(path, ROOT) for path in sorted((ROOT / package).rglob("*.py"))}


def offenders(package: str, forbidden) -> list[str]:
    return [
        f"{file}: {name}"
        for file, names in imported_modules(package).items()
        for name in sorted(names)
        if forbidden(name)
    ]


def is_under(name: str, *roots: str) -> bool:
    return any(name == r or name.startswith(r + ".") for r in roots)


def model_closure(start: str) -> set[str]:
    """Every model.* module that importing `start` loads, following model/'s imports transitively."""
    graph = {module_name(ROOT / file, ROOT): names for file, names in imported_modules("model").items()}
    seen, todo = set(), [start]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        for name in graph.get(current, ()):
            for candidate in (name, name.rpartition(".")[0]):  # `from model.x import f` names model.x.f
                if candidate in graph and candidate not in seen:
                    todo.append(candidate)
    return seen


def test_data_imports_no_torch():
    assert offenders("data", lambda n: is_under(n, "torch", "model", "app", "frontend")) == []


def test_frontend_talks_http_only():
    assert offenders("frontend", lambda n: is_under(n, "data", "model", "torch", "app")) == []


def test_app_never_imports_the_training_loop():
    allowed = (
        "model.inference",
        "model.config",
        "model.cli",
        "model.device",
        "model.retrain",
        "model.progress",
        "model.cleanup_decision",
    )
    bad = offenders("app", lambda n: is_under(n, "model") and n != "model" and not is_under(n, *allowed))
    assert bad == []
    # and the modules app/ may import must not pull the training loop in themselves, at any depth
    for module in allowed:
        if (ROOT / (module.replace(".", "/") + ".py")).exists():
            assert "model.train" not in model_closure(module), f"{module} loads model.train"


def test_retrain_planning_and_progress_need_no_torch():
    """The web process decides retrains and reads progress files without loading torch."""
    for module in ("retrain", "progress", "config"):
        names = imported_modules("model")[f"model/{module}.py"]
        assert not any(is_under(n, "torch", "model.train", "model.slices") for n in names), module


def test_checker_sees_every_kind_of_import(tmp_path, monkeypatch):
    """The checker itself must be able to fail: relative, dynamic, lazy and deep imports are all seen."""
    fake = tmp_path / "data"
    (fake / "sub").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "sub" / "__init__.py").write_text("from .. import model_stub\n")
    (fake / "sub" / "deep.py").write_text("from ...frontend import ui\n")
    (fake / "bad.py").write_text(
        "import importlib\n\ndef f():\n    import torch.nn.functional\n"
        "    importlib.import_module('model.train')\n    __import__('app.main')\n"
    )
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    assert offenders("data", lambda n: is_under(n, "torch", "model", "app", "frontend")) == [
        "data/bad.py: app.main",
        "data/bad.py: model.train",
        "data/bad.py: torch.nn.functional",
        "data/sub/deep.py: frontend",
        "data/sub/deep.py: frontend.ui",
    ]
    assert "data.model_stub" in imported_modules("data")["data/sub/__init__.py"]


def test_closure_follows_model_imports(tmp_path, monkeypatch):
    fake = tmp_path / "model"
    fake.mkdir()
    (fake / "inference.py").write_text("from .checkpoint import load\n")
    (fake / "checkpoint.py").write_text("def load():\n    from model.train import loop\n")
    (fake / "train.py").write_text("")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    assert "model.train" in model_closure("model.inference")
