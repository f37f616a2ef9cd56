"""The layers of docs/architecture.md, checked by parsing every import (including lazy ones inside functions)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(package: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
        found[str(path.relative_to(ROOT))] = names
    return found


def offenders(package: str, forbidden) -> list[str]:
    return [
        f"{file}: {name}"
        for file, names in imported_modules(package).items()
        for name in sorted(names)
        if forbidden(name)
    ]


def is_under(name: str, *roots: str) -> bool:
    return any(name == r or name.startswith(r + ".") for r in roots)


def test_data_imports_no_torch():
    assert offenders("data", lambda n: is_under(n, "torch", "model", "app", "frontend")) == []


def test_frontend_talks_http_only():
    assert offenders("frontend", lambda n: is_under(n, "data", "model", "torch")) == []


def test_app_never_imports_the_training_loop():
    allowed = ("model.inference", "model.config", "model.cli", "model.device", "model.retrain", "model.progress")
    bad = offenders("app", lambda n: is_under(n, "model") and n != "model" and not is_under(n, *allowed))
    assert bad == []
    # and the modules app/ may import must not pull the training loop in themselves
    for module in ("inference", "config", "cli", "device", "retrain", "progress"):
        path = ROOT / "model" / f"{module}.py"
        if path.exists():
            names = imported_modules("model")[f"model/{module}.py"]
            assert not any(is_under(n, "model.train") for n in names), f"model/{module}.py imports model.train"


def test_retrain_planning_and_progress_need_no_torch():
    """The web process decides retrains and reads progress files without loading torch."""
    for module in ("retrain", "progress", "config"):
        names = imported_modules("model")[f"model/{module}.py"]
        assert not any(is_under(n, "torch", "model.train", "model.slices") for n in names), module


def test_checker_sees_a_violation(tmp_path, monkeypatch):
    """The checker itself must be able to fail."""
    fake = tmp_path / "data"
    fake.mkdir()
    (fake / "bad.py").write_text("def f():\n    import torch.nn\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    assert offenders("data", lambda n: is_under(n, "torch")) == ["data/bad.py: torch.nn"]
