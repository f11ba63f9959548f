"""The architecture as the code has it: imports run one way, and the Bento carries what the
service imports."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, packages_distributions, requires
from pathlib import Path

import pathspec
import pytest
import yaml

from training.config import PROJECT_ROOT

# What each part of the project may import from the others: service.py -> serving/ ->
# training/ -> index/, never backwards; the dashboard is an HTTP client only.
MAY_IMPORT = {
    "index": {"index"},
    "training": {"training", "index"},
    "serving": {"serving", "training", "index"},
    "service": {"serving", "training", "index"},
    "dashboard": {"dashboard"},
}
TRAINING_ONLY = {"matplotlib", "typer", "scipy", "streamlit", "altair"}
# Imported when installed, not needed: torch.hub falls back to a bar of its own without it.
OPTIONAL = {"tqdm"}


def _imported_parts(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names & set(MAY_IMPORT)


def _sources(part: str) -> list[Path]:
    if part == "service":
        return [PROJECT_ROOT / "service.py"]
    return sorted((PROJECT_ROOT / part).rglob("*.py"))


@pytest.mark.parametrize("part", sorted(MAY_IMPORT))
def test_imports_run_one_way(part: str):
    backwards = {
        path.relative_to(PROJECT_ROOT).as_posix(): sorted(_imported_parts(path) - MAY_IMPORT[part])
        for path in _sources(part)
    }
    assert {k: v for k, v in backwards.items() if v} == {}


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _with_dependencies(names: set[str]) -> set[str]:
    """The distributions and everything they require (extras left out)."""
    found, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found.add(name)
        try:
            required = requires(name) or []
        except PackageNotFoundError:
            continue
        todo += [_name(r) for r in required if "extra ==" not in r]
    return found


def test_the_bento_carries_what_the_service_imports_and_no_training_extras():
    bento = yaml.safe_load((PROJECT_ROOT / "bentofile.yaml").read_text())
    listed = {_name(p) for p in bento["python"]["packages"]}
    assert not listed & TRAINING_ONLY
    code = (
        "import json, sys, service; "
        "print(json.dumps({n: getattr(m, '__file__', None) for n, m in sys.modules.items()}))"
    )
    env = {**os.environ, "GAMEREC_MODEL_TAG": "gamerec:latest"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    modules = json.loads(done.stdout.splitlines()[-1])
    ours = sorted(
        Path(f).relative_to(PROJECT_ROOT).as_posix()
        for f in modules.values()
        if f
        and Path(f).is_relative_to(PROJECT_ROOT)
        and Path(f).relative_to(PROJECT_ROOT).parts[0] in {"service.py", *MAY_IMPORT}
    )
    included = pathspec.PathSpec.from_lines("gitwildmatch", bento["include"])
    excluded = pathspec.PathSpec.from_lines("gitwildmatch", bento["exclude"])
    missing = [f for f in ours if not included.match_file(f) or excluded.match_file(f)]
    assert "serving/orchestration.py" in ours and missing == []
    tops = {m.split(".")[0] for m in modules}
    assert not tops & TRAINING_ONLY
    distributions = packages_distributions()
    imported = {_name(d) for top in tops for d in distributions.get(top, [])}
    carried = _with_dependencies(listed | {"bentoml"})
    assert imported - carried - OPTIONAL - {"gamerec"} == set()
    # The image lacks the optional ones: our modules the service imports may not need them.
    needs_optional = {
        f: sorted(_top_level_imports(PROJECT_ROOT / f) & (OPTIONAL | TRAINING_ONLY)) for f in ours
    }
    assert {f: names for f, names in needs_optional.items() if names} == {}


def _top_level_imports(path: Path) -> set[str]:
    """Packages a module imports when it is imported (not inside its functions)."""
    names = set()
    for node in ast.parse(path.read_text(), filename=str(path)).body:
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names
