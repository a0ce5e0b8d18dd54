"""Project rules that must not drift: core stays pure, docs cover every command, doctests run."""

from __future__ import annotations

import ast
import dataclasses
import doctest
import importlib
import re
from pathlib import Path

import pytest

from actgeom.cli.app import app
from actgeom.core.api import FAMILIES
from actgeom.core.families.protocol import Family
from actgeom.core.state.accumulators import ACCUMULATORS, SPECS, Spec

ROOT = Path(__file__).parent.parent
CORE = sorted((ROOT / "core").rglob("*.py"))
COMMANDS = sorted(command.name for command in app.registered_commands)


@pytest.mark.parametrize("path", CORE, ids=lambda p: str(p.relative_to(ROOT)))
def test_core_never_imports_cli_libraries_or_prints(path):
    text = path.read_text()
    assert not re.search(r"^\s*(import|from)\s+(typer|rich|click)\b", text, re.M)
    assert not re.search(r"\bprint\(", text)
    if path.parent.name != "dump":
        assert not re.search(r"^\s*(import|from)\s+h5py\b", text, re.M), "only core/dump touches h5py"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example_and_is_in_the_readme(cli, command):
    code, out, _ = cli(command, "--help")
    assert code == 0 and "Example" in out
    assert re.search(rf"`actgeom {command}\b", (ROOT / "README.md").read_text()), f"README does not show `actgeom {command}`"


@pytest.mark.parametrize("module", ["actgeom.core.state.engine", "actgeom.core.dump.writer", "actgeom.core.base.outputs",
                                    "actgeom.core.statistics", "actgeom.cli.output", "actgeom.core.base.labels"])
def test_doctests(module):
    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0


def test_every_option_of_every_command_is_in_the_readme():
    import typer.main

    readme = (ROOT / "README.md").read_text()
    missing = [f"{name} {opt}" for name, command in typer.main.get_command(app).commands.items()
               for param in command.params
               for opt in list(getattr(param, "opts", [])) + list(getattr(param, "secondary_opts", []))
               if opt.startswith("--") and opt != "--help" and opt not in readme]
    assert not missing, f"options missing from README.md: {missing}"


HEAVY = ("numpy", "scipy", "h5py", "matplotlib", "pandas", "torch")
_LOADED_BY = """
import contextlib, io, json, sys
HEAVY = {heavy!r}
def loaded():
    return sorted(name for name in HEAVY if name in sys.modules)
found = {{}}
import actgeom
found["import actgeom"] = loaded()
from actgeom.cli.app import app
found["import actgeom.cli.app"] = loaded()
for argv in {argvs!r}:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        app(argv, prog_name="actgeom")
    found["actgeom " + " ".join(argv)] = loaded()
import actgeom.core.api  # the control: the computations do import numpy
found["control"] = loaded()
print(json.dumps(found))
"""


def test_help_and_version_import_no_numerical_library():
    """`actgeom --help`, `--version` and `COMMAND --help` start at once (issue #14): numpy, scipy,
    h5py and matplotlib are imported by a command when it runs, never by the CLI's modules or the
    public package. (The time itself is measured in benchmarks/bench_startup.py, not here.)"""
    import json
    import subprocess
    import sys

    argvs = [["--version"], ["--help"], *([command, "--help"] for command in COMMANDS)]
    script = _LOADED_BY.format(heavy=HEAVY, argvs=argvs)
    found = json.loads(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout)
    assert "numpy" in found.pop("control")
    assert found == dict.fromkeys(found, []), {step: modules for step, modules in found.items() if modules}
    assert len(found) == 2 + len(argvs)


def test_every_package_directory_is_installed():
    """A folder of cli/ or core/ with an __init__.py that pyproject.toml does not list is left out of a
    plain `pip install .` (what CI and the README do), while an editable install still finds it."""
    import tomllib

    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {"actgeom." + ".".join(init.parent.relative_to(ROOT).parts)
               for folder in ("cli", "core") for init in (ROOT / folder).rglob("__init__.py")}
    assert on_disk - {"actgeom.core.public"} <= set(setuptools["packages"])
    assert {name: path for name, path in setuptools["package-dir"].items()
            if not (ROOT / path / "__init__.py").exists()} == {}


def test_a_run_without_inference_does_not_load_scipy_stats():
    """scipy.stats takes ~1 s to load: the analysis loads it only when an interval or a p-value needs it
    (it made every command ~1 s slower once, found by the before/after benchmark of #23)."""
    import subprocess
    import sys

    script = "import sys, actgeom.core.api, actgeom.cli.app; print('scipy.stats' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout == "False\n"


def test_readme_names_the_command_that_runs_everything_ci_runs():
    """A user's `pytest` without extras skips the extras' tests: the README must say how to run them all."""
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash .ci/run" in readme
    extras = re.search(r"pip install '\.\[test,([a-z,]+)\]'", ci).group(1).split(",")
    assert f"`{','.join(extras)}`" in readme, f"README does not list the extras CI installs: {extras}"
    assert re.search(r"^pytest\b", ci, re.M), "CI must run the README's test command"


MAX_MODULE_LINES = 400  # STYLE.md: a module longer than this holds more than one idea
MAX_FUNCTION_LINES = 80  # STYLE.md: a function longer than this does more than one thing
SIZED = sorted(path for folder in ("core", "cli") for path in (ROOT / folder).rglob("*.py"))


def _long_functions(path: Path) -> list[str]:
    """Every function (nested and methods included) longer than MAX_FUNCTION_LINES, with its length."""
    tree = ast.parse(path.read_text())
    return [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]


def test_no_module_or_function_is_too_long():
    """Issue #23: no file over MAX_MODULE_LINES lines in core/ or cli/, no function over
    MAX_FUNCTION_LINES (its decorators aside)."""
    sizes = {str(path.relative_to(ROOT)): len(path.read_text().splitlines()) for path in SIZED}
    long_modules = {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES}
    long_functions = {str(path.relative_to(ROOT)): found for path in SIZED if (found := _long_functions(path))}
    assert not long_modules, f"modules over {MAX_MODULE_LINES} lines: {long_modules}"
    assert not long_functions, f"functions over {MAX_FUNCTION_LINES} lines: {long_functions}"


def test_the_size_check_can_fail(tmp_path):
    """The function measure counts a long function (so the check above is not vacuous)."""
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (tmp_path / "long.py").write_text(f"def short():\n    pass\n\n\n@decorated\ndef long():\n{body}\n")
    assert _long_functions(tmp_path / "long.py") == [f"long ({MAX_FUNCTION_LINES + 1} lines)"]


def _missing_steps(family) -> list[str]:
    """The steps of CONTRIBUTING.md ("A family") that ``family`` skipped, in its order."""
    name, options = family.name, family.options_class
    readme, reference = (ROOT / "README.md").read_text(), (ROOT / "docs" / "metrics.md").read_text()
    checks = {
        "1. its options: a frozen dataclass in core/base/options.py": options.__module__ == "actgeom.core.base.options"
        and dataclasses.is_dataclass(options) and options.__dataclass_params__.frozen,
        "2. its metrics: pure functions outside the glue, in a registry naming the family": bool(family.metrics)
        and all(m.family == name and not m.compute.__module__.startswith("actgeom.core.families.")
                for m in family.metrics.values()),
        f"3. its glue: FAMILY in core/families/{name}.py": family.layer.__module__.startswith(f"actgeom.core.families.{name}"),
        f"5. its command: cli/{name}.py, registered in cli/app.py": name in COMMANDS and (ROOT / "cli" / f"{name}.py").exists(),
        f"6. the README shows `actgeom {name}`": f"`actgeom {name}" in readme,
        "7. its section of docs/metrics.md (docs/generate_metrics.py FAMILY_TEXT)": f"(`actgeom {name}`)\n" in reference,
        f"8. its tests: tests/test_{name}.py": (ROOT / "tests" / f"test_{name}.py").exists(),
    }
    return [step for step, done in checks.items() if not done]


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_family_took_every_step_of_contributing(name):
    """CONTRIBUTING.md lists the files a new family touches; a family that skipped one fails here
    (every metric's docs/metrics.md row and README mention: tests/test_registry.py)."""
    assert _missing_steps(FAMILIES[name]) == []


def test_a_family_that_skipped_the_steps_is_caught():
    """The check above can fail: a family declared only in a test misses every step."""

    @dataclasses.dataclass
    class LooseOptions:  # not frozen, not in core/base/options.py
        size: int = 1

    family = Family(name="sketch", options_class=LooseOptions, metrics={}, needs=lambda options, facts: [],
                    layer=lambda ctx, options: None)
    assert [step[0] for step in _missing_steps(family)] == ["1", "2", "3", "5", "6", "7", "8"]


def test_every_statistic_is_registered_with_its_accumulator():
    """CONTRIBUTING.md, "A statistic": every spec in core/state/accumulators/ has its slot in SPECS, and its
    accumulator merges, serialises and finalises (what partial statistics and shards rely on)."""
    specs, todo = [], [Spec]
    while todo:
        spec = todo.pop()
        todo.extend(spec.__subclasses__())
        if spec is not Spec and spec.__module__.startswith("actgeom.core."):
            specs.append(spec)
    assert specs and all(SPECS.get(spec.slot) is spec for spec in specs), [s.__name__ for s in specs]
    for slot, accumulator in ACCUMULATORS.items():
        missing = [m for m in ("update", "merge", "finalize", "to_arrays", "from_arrays") if not hasattr(accumulator, m)]
        assert not missing, f"the {slot} accumulator ({accumulator.__name__}) has no {missing}"
