"""The code's shape: which package may import which, and where a defense's name may appear.

* ``common/`` (what both sides import) imports nothing from ``client/``, ``server/`` or
  ``simulations/``; the ClientApp and the ServerApp do not import each other or the
  simulations. Imports inside functions count too.
* No module outside ``common/defenses/`` names a defense (its run-config value as a string),
  so a defense is added in its own module and the registry alone; simulations may pick arms
  by name but never branch on one.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

from common.defenses import DEFENSES

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "common": {"client", "server", "simulations"},
    "client": {"server", "simulations"},
    "server": {"client", "simulations"},
}
# "visualmixer" is also the project's name: the command's prog name and the cache folder.
PROJECT_NAME_USES = {("common/cli.py", "visualmixer"), ("common/data.py", "visualmixer")}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_runs_against_the_layers(package):
    wrong = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) & FORBIDDEN[package])
        for path in (ROOT / package).rglob("*.py")
    }
    assert {k: v for k, v in wrong.items() if v} == {}


def string_literals(path: Path) -> list[tuple[int, str]]:
    if path.suffix == ".js":
        return [(i, m.group(2)) for i, line in enumerate(path.read_text().splitlines(), 1)
                for m in re.finditer(r"([\"'`])([^\"'`]*)\1", line)]
    found = []
    for token in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
        if token.type == tokenize.STRING:
            try:
                value = ast.literal_eval(token.string)
            except (ValueError, SyntaxError):  # f-strings
                continue
            if isinstance(value, str):
                found.append((token.start[0], value))
    return found


def test_no_module_outside_the_defenses_names_one():
    names = set(DEFENSES) - {"none"}  # "none" is every registry's "off"
    mentions = []
    for package in ("common", "client", "server"):
        for path in (ROOT / package).rglob("*"):
            relative = str(path.relative_to(ROOT))
            if path.suffix not in (".py", ".js") or relative.startswith("common/defenses/"):
                continue
            mentions += [f"{relative}:{line} {value!r}" for line, value in string_literals(path)
                         if value in names and (relative, value) not in PROJECT_NAME_USES]
    assert mentions == []


def test_simulations_never_branch_on_a_defense_name():
    names = "|".join(re.escape(name) for name in DEFENSES if name != "none")  # "none": the baseline
    pattern = re.compile(rf"""["']({names})["']\s+(not\s+)?in\b|[!=]=\s*["']({names})["']""")
    hits = [f"{path.relative_to(ROOT)}:{i}" for path in (ROOT / "simulations").rglob("*.py")
            for i, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert hits == []


def test_every_import_of_the_projects_own_modules_resolves():
    """Imports inside functions run only when the function does; each must still name a
    module and names that exist (a moved module must not leave one behind)."""
    import importlib

    own = {"common", "client", "server", "simulations"}
    missing = []
    for package in sorted(own):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules, names = [node.module], [a.name for a in node.names]
                elif isinstance(node, ast.Import):
                    modules, names = [a.name for a in node.names], []
                else:
                    continue
                for module in modules:
                    if module.split(".")[0] not in own:
                        continue
                    try:
                        loaded = importlib.import_module(module)
                    except ImportError as err:
                        missing.append(f"{path.relative_to(ROOT)}:{node.lineno} {module} ({err})")
                        continue
                    for name in names:
                        if not hasattr(loaded, name):
                            try:
                                importlib.import_module(f"{module}.{name}")
                            except ImportError:
                                missing.append(f"{path.relative_to(ROOT)}:{node.lineno} {module}.{name}")
    assert missing == []
