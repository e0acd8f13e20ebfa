"""Packaging: pyproject.toml declares ranges a library can live with, constraints.txt pins what CI tests with."""
from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def requirements() -> list[Requirement]:
    """The base dependencies and those of every extra (not the extras that name other extras of the project)."""
    extras = PROJECT.get("optional-dependencies", {}).values()
    found = [Requirement(r) for r in PROJECT["dependencies"] + [r for extra in extras for r in extra]]
    return [r for r in found if canonicalize_name(r.name) != PROJECT["name"]]


def pins() -> dict[str, str]:
    """constraints.txt as {normalised name: version}; every non-comment line must be `name==version`."""
    pinned = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.strip().partition("==")
            assert sep and version, f"constraints.txt: {line!r} is not name==version"
            assert canonicalize_name(name) not in pinned, f"constraints.txt: {name} pinned twice"
            pinned[canonicalize_name(name)] = version
    return pinned


def test_dependencies_are_ranges_and_python_has_no_upper_bound():
    exact = [str(r) for r in requirements() if any(s.operator in ("==", "===") for s in r.specifier)]
    assert not exact, f"exact pins belong in constraints.txt, not pyproject.toml: {exact}"
    assert not any(op in PROJECT["requires-python"] for op in ("<", "==", "~=")), PROJECT["requires-python"]


def test_every_requirement_is_pinned_in_constraints_within_its_range():
    pinned = pins()
    for req in requirements():
        name = canonicalize_name(req.name)
        assert name in pinned, f"{req.name} has no line in constraints.txt"
        assert req.specifier.contains(pinned[name], prereleases=True), \
            f"constraints.txt pins {req.name}=={pinned[name]}, outside pyproject's {req}"


def test_python_m_zeroshot_prints_the_project_version():
    out = subprocess.run([sys.executable, "-m", "zeroshot", "--version"], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    assert out.strip() == f"zeroshot {PROJECT['version']}"


def test_every_subpackage_is_packaged():
    """A sub-package missing from [tool.setuptools] packages works in the editable install and is absent from a
    wheel: every folder of zeroshot/ with an __init__.py must be listed."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(("zeroshot",) + p.parent.relative_to(ROOT / "zeroshot").parts)
             for p in (ROOT / "zeroshot").rglob("__init__.py")}
    assert found - listed == set()
