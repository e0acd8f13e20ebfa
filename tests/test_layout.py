"""The layering the design asks for: the library never imports the CLI, nothing loads project modules by name,
and both entry points (`zeroshot`, `python -m zeroshot`) reach the same parser."""
from __future__ import annotations

import ast
import subprocess
import sys
from importlib.util import resolve_name
from pathlib import Path

import pytest

import zeroshot
import zeroshot.heads


def _modules(package) -> dict[str, Path]:
    """Dotted module name -> file, for every module of an installed package."""
    root = Path(package.__file__).parent
    return {".".join([package.__name__, *p.relative_to(root).with_suffix("").parts]).removesuffix(".__init__"): p
            for p in root.rglob("*.py")}


MODULES = {**_modules(zeroshot), **_modules(zeroshot.heads)}
LIBRARY = {name: path for name, path in MODULES.items()
           if not (name == "zeroshot.cli" or name.startswith("zeroshot.cli.") or name == "zeroshot.__main__")}


def _imported_modules(name: str, path: Path) -> list[str]:
    """Absolute names of what a module imports, relative imports resolved against its package."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = resolve_name("." * node.level + (node.module or ""), package) if node.level else node.module
            names += [base] + [f"{base}.{alias.name}" for alias in node.names]
    return names


@pytest.mark.parametrize("name", sorted(LIBRARY))
def test_library_modules_never_import_the_cli(name):
    imported = _imported_modules(name, LIBRARY[name])
    assert not [m for m in imported if m == "zeroshot.cli" or m.startswith("zeroshot.cli.")]


def test_no_module_is_loaded_by_name():
    assert [name for name, path in MODULES.items() if "import_module" in path.read_text()] == []


def test_scripts_use_the_library_not_the_cli():
    scripts = Path(__file__).resolve().parents[1] / "scripts"
    assert [p.name for p in scripts.glob("*.py") if "zeroshot.cli" in p.read_text()] == []


def test_python_dash_m_zeroshot_runs_the_cli():
    out = subprocess.run([sys.executable, "-m", "zeroshot", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "usage: zeroshot" in out.stdout and "fewshot" in out.stdout
