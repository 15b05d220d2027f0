"""The house plan holds: a test that reads every import of the package and fails when a layer reaches up.

bottom   vqgen.priors, vqgen.plugins             their own contract and torch only: no vqgen.stages, not each other
         vqgen.stages.tokenizer                  the stage-one model and its quantizers: nothing else of vqgen
         vqgen.stages.core                       errors, options, registries, the atomic writer: no other room
                                                 but the bottom packages whose registries it holds
middle   data, training, artifacts, sampling, evaluation, interop, reporting   never the commands, the API or the CLI
top      vqgen.stages.commands.*, vqgen.stages.pipeline      never each other
command line  vqgen.cli, vqgen.command_line          the only modules that import typer or the commands
Benchmarks reach a command only through its entry (run_*) and its config (*Config); tests may also patch one.
"""

import ast
import io
import subprocess
import sys
import tokenize
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = ("priors", "plugins", "stages", "command_line")
COMMAND_LINE = ("vqgen.cli", "vqgen.command_line")
MIDDLE = ("data", "training", "artifacts", "sampling", "evaluation", "interop", "reporting")


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    parts = parts[:-1] if parts[-1] == "__init__" else parts
    return ".".join(("vqgen", *parts))


def all_imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth (lazy imports inside functions count too); `from m import x`
    counts as both m and m.x."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {f"{node.module}.{a.name}" for a in node.names} | {node.module}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return found


def vqgen_imports(path: Path) -> set[str]:
    """Every vqgen module a file imports, at any depth."""
    return {m for m in all_imports(path) if m == "vqgen" or m.startswith("vqgen.")}


def forbidden(module: str, imported: str) -> str | None:
    """Why `module` may not import `imported`, or None."""

    def inside(name: str, room: str) -> bool:
        return name == room or name.startswith(room + ".")

    stages = "vqgen.stages"
    depth = 3 if inside(module, stages) else 2
    room = ".".join(module.split(".")[:depth])  # vqgen.priors, vqgen.stages.core, vqgen.stages.commands, ...
    top = (f"{stages}.commands", f"{stages}.pipeline", *COMMAND_LINE)
    if imported == "typer" or imported.startswith("typer."):
        return None if room in COMMAND_LINE else "only the command line knows typer"
    if not inside(imported, "vqgen"):
        return None
    if inside(imported, f"{stages}.commands") and room not in (*COMMAND_LINE, f"{stages}.commands"):
        return "only the command line imports the commands"
    if room in ("vqgen.priors", "vqgen.plugins"):
        if imported != "vqgen" and not inside(imported, room):
            return "a bottom package imports its own contract only"
    elif room == f"{stages}.tokenizer":
        if not inside(imported, room):
            return "the tokenizer's model and quantizers are a bottom room"
    elif room == f"{stages}.core":
        if not any(
            inside(imported, r) for r in (room, "vqgen.priors", "vqgen.plugins", f"{stages}.tokenizer")
        ):
            return "core is the host's bottom room"
    elif room in {f"{stages}.{m}" for m in MIDDLE}:
        if any(inside(imported, up) for up in top):
            return "a middle room never imports the commands, the API or the CLI"
    elif room == "vqgen.command_line" and inside(imported, "vqgen.cli"):
        return "the command line's parts sit below cli.py"
    elif room in top[:2] and any(inside(imported, up) for up in top):
        return "commands and the API never import each other"
    return None


def violations(root: Path = ROOT) -> list[str]:
    out = []
    for folder in PACKAGE_DIRS:
        for path in sorted((root / folder).rglob("*.py")):
            module = module_name(path, root)
            for imported in sorted(all_imports(path)):
                why = forbidden(module, imported)
                if why:
                    out.append(f"{module} imports {imported}: {why}")
    return out


def test_no_layer_reaches_up():
    assert violations() == []


@pytest.mark.parametrize(
    "module,imported",
    [
        ("vqgen.priors.gru", "vqgen.stages.core.errors"),
        ("vqgen.plugins.gan", "vqgen.priors.base"),
        ("vqgen.stages.tokenizer.vqvae", "vqgen.stages.training.trainer"),
        ("vqgen.stages.training.trainer", "vqgen.stages.commands.tokenize"),
        ("vqgen.stages.commands.generate", "vqgen.stages.commands.tokenize"),
        ("vqgen.stages.commands.push", "vqgen.stages.pipeline"),
        ("vqgen.stages.core.build", "typer"),
        ("vqgen.stages.commands.tokenize", "typer.models"),
        ("vqgen.stages.pipeline", "vqgen.stages.commands.generate"),
        ("vqgen.stages.training.tasks", "vqgen.stages.commands.tokenize"),
        ("vqgen.command_line.config", "vqgen.cli"),
    ],
)
def test_the_layer_rule_catches_a_reach_up(module, imported):
    assert forbidden(module, imported) is not None


@pytest.mark.parametrize(
    "module,imported",
    [
        ("vqgen.command_line.config", "typer"),
        ("vqgen.command_line.config", "vqgen.stages.commands.tokenize"),
        ("vqgen.command_line.options", "vqgen.stages.core.runconfig"),
        ("vqgen.stages.commands.train_prior", "vqgen.stages.core.build"),
        ("vqgen.stages.training.tasks", "vqgen.stages.evaluation.priors"),
    ],
)
def test_the_layer_rule_allows_the_plan(module, imported):
    assert forbidden(module, imported) is None


def import_cycles(root: Path = ROOT) -> list[list[str]]:
    """Groups of package modules that import each other, directly or round a loop (lazy imports count)."""
    modules = {module_name(p, root): p for d in PACKAGE_DIRS for p in (root / d).rglob("*.py")}
    graph = {m: {i for i in vqgen_imports(p) if i in modules and i != m} for m, p in modules.items()}

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        return seen

    reachable = {m: reach(m) for m in graph}
    loops = {
        frozenset({m} | {n for n in reachable[m] if m in reachable[n]}) for m in graph if m in reachable[m]
    }
    return sorted(sorted(loop) for loop in loops)


def test_no_import_cycles():
    assert import_cycles() == []


def test_an_import_cycle_is_found(tmp_path):
    for name, imports in (("a", "vqgen.stages.data.b"), ("b", "vqgen.stages.data.a")):
        (tmp_path / "stages" / "data").mkdir(parents=True, exist_ok=True)
        (tmp_path / "stages" / "data" / f"{name}.py").write_text(f"def f():\n    import {imports}\n")
    assert import_cycles(tmp_path) == [["vqgen.stages.data.a", "vqgen.stages.data.b"]]


def test_benchmarks_are_a_package_without_path_edits():
    """benchmarks/ is imported as `benchmarks.NAME` (python -m benchmarks.NAME): no script puts its own folder
    or the repository on sys.path (a path to another project's checkout, given on the command line, may go there)."""
    import re

    assert (ROOT / "benchmarks" / "__init__.py").is_file()
    own = re.compile(r"sys\.path\.(insert|append)\([^\n]*(ROOT|__file__)")
    edits = [p.name for p in (ROOT / "benchmarks").rglob("*.py") if own.search(p.read_text())]
    assert edits == []


def test_benchmarks_reach_commands_only_through_their_entry():
    """A benchmark runs a command through `run_*` and its `*Config` only: library code lives in the rooms."""
    bad = []
    for path in sorted((ROOT / "benchmarks").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("vqgen.stages.commands."):
                names = [a.name for a in node.names]
                bad += [(path.name, n) for n in names if not (n.startswith("run_") or n.endswith("Config"))]
    assert bad == []


def test_a_prior_that_imports_the_host_fails_the_scan(tmp_path):
    import shutil

    for folder in PACKAGE_DIRS:
        shutil.copytree(
            ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__", "assets")
        )
    gru = tmp_path / "priors" / "gru.py"
    gru.write_text("from vqgen.stages.core.errors import UserError\n" + gru.read_text())
    found = violations(tmp_path)
    assert found and all(v.startswith("vqgen.priors.gru imports vqgen.stages.core.errors") for v in found), (
        found
    )


# --- sizes: every file <= 400 lines, every function <= 60 (STYLE.md) -----------------------------------------------
SIZED = ("stages", "priors", "plugins", "command_line", "cli.py", "benchmarks")
MAX_FILE_LINES, MAX_FUNCTION_LINES = 400, 60
# Declaration tables may run longer: they declare, they do not compute. A typer command (registered in cli.py's
# COMMANDS) declares its options in its parameter list, so only its body is measured, and that body must
# delegate. Any other table goes here, "path::function": why it is a table. (None today.)
DECLARATION_TABLES: dict[str, str] = {}


def typer_commands(root: Path = ROOT) -> set[str]:
    """`command_line/MODULE.py::function` of every command cli.py registers (`COMMANDS = {"name": module.f}`)."""
    found = set()
    for node in ast.walk(ast.parse((root / "cli.py").read_text())):
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["COMMANDS"]:
            for value in node.value.values:
                found.add(f"command_line/{value.value.id}.py::{value.attr}")
    return found


def size_violations(root: Path = ROOT) -> list[str]:
    """Files over MAX_FILE_LINES and functions over MAX_FUNCTION_LINES (from `def` to their last line; a typer
    command from its docstring) under the SIZED folders, but the DECLARATION_TABLES."""
    commands, out = typer_commands(root), []
    for name in SIZED:
        paths = [root / name] if name.endswith(".py") else sorted((root / name).rglob("*.py"))
        for path in paths:
            rel, text = path.relative_to(root).as_posix(), path.read_text()
            if len(text.splitlines()) > MAX_FILE_LINES:
                out.append(f"{rel}: {len(text.splitlines())} lines")
            for node in ast.walk(ast.parse(text)):
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                key = f"{rel}::{node.name}"
                start = node.body[0].lineno if key in commands else node.lineno
                lines = node.end_lineno - start + 1
                if lines > MAX_FUNCTION_LINES and key not in DECLARATION_TABLES:
                    out.append(f"{key}: {lines} lines")
    return out


def test_files_and_functions_stay_small():
    assert size_violations() == []


def test_the_size_guard_catches_a_long_function_and_a_long_file(tmp_path):
    long_body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    options = "".join(f"    option{i}: int = {i},\n" for i in range(MAX_FUNCTION_LINES))
    files = {
        "stages/core/steps.py": f"def too_long():\n{long_body}",  # def + 60 lines
        "benchmarks/tall.py": "x = 1\n" * (MAX_FILE_LINES + 1),
        "command_line/train.py": f'def tokenize(\n{options}):\n    """Options declared, a short body."""\n',
        "command_line/results.py": f'def generate(\n{options}):\n    """A body too long."""\n{long_body}',
        "cli.py": "COMMANDS = {'tokenize': train.tokenize, 'generate': results.generate}\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert sorted(size_violations(tmp_path)) == [
        "benchmarks/tall.py: 401 lines",
        "command_line/results.py::generate: 61 lines",
        "stages/core/steps.py::too_long: 61 lines",
    ]


# --- layout: the formatter owns it; `# fmt: skip` only keeps a table in rows --------------------------------------


def unformatted_non_tables(root: Path = ROOT) -> list[str]:
    """`path:line` of every `# fmt: skip` under the SIZED folders and tests/ that does not end an assignment or a return of
    a literal table (a dict, list, tuple or set laid out in rows, such as a LIMITS table or a map of flag names)."""
    out = []
    for name in (*SIZED, "tests"):
        paths = [root / name] if name.endswith(".py") else sorted((root / name).rglob("*.py"))
        for path in filter(Path.is_file, paths):
            text = path.read_text()
            marked = {  # comments only: a test may hold the marker inside a string
                token.start[0]
                for token in tokenize.generate_tokens(io.StringIO(text).readline)
                if token.type == tokenize.COMMENT and token.string.endswith("fmt: skip")
            }
            tables = {
                node.end_lineno
                for node in ast.walk(ast.parse(text))
                if isinstance(node, (ast.Assign, ast.AnnAssign, ast.Return))
                and isinstance(node.value, (ast.Dict, ast.List, ast.Tuple, ast.Set))
            }
            out += [f"{path.relative_to(root).as_posix()}:{i}" for i in sorted(marked - tables)]
    return out


def test_fmt_skip_only_keeps_tables():
    assert unformatted_non_tables() == []


def test_the_layout_guard_catches_a_call_kept_from_the_formatter(tmp_path):
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "steps.py").write_text(
        "LIMITS = {\n    'a': 1, 'b': 2,\n}  # fmt: skip\nx = dict(\n    a=1, b=2,\n)  # fmt: skip\n"
    )
    assert unformatted_non_tables(tmp_path) == ["stages/steps.py:6"]


def test_imports_use_the_vqgen_names_only():
    bare = ("stages", "priors", "plugins", "cli", "command_line")
    for path in [
        ROOT / "cli.py",
        *[p for d in (*PACKAGE_DIRS, "tests", "benchmarks") for p in (ROOT / d).rglob("*.py")],
    ]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            assert not [n for n in names if n and n.split(".")[0] in bare], (path, names)


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_one_import_package_from_any_directory(tmp_path):
    assert run_python("import vqgen.priors.base, vqgen.plugins.base, vqgen.stages", tmp_path).returncode == 0
    for name in ("stages", "priors", "plugins", "cli", "command_line"):
        result = run_python(f"import {name}", tmp_path)
        assert result.returncode != 0 and "ModuleNotFoundError" in result.stderr, name
    help_text = subprocess.run(
        [sys.executable, "-m", "vqgen", "--help"], cwd=tmp_path, capture_output=True, text=True
    )
    assert help_text.returncode == 0 and "train-prior" in help_text.stdout


@pytest.mark.slow
def test_the_wheel_holds_vqgen_only(tmp_path):
    """A built wheel holds vqgen/ (with its data files) and its dist-info, nothing else at the top level."""
    command = ["pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path, ROOT]
    build = subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = tmp_path.glob("vqgen-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"vqgen", wheel.name.split("-py3")[0] + ".dist-info"}
    expected = (
        "__init__.py",
        "__main__.py",
        "cli.py",
        "priors/base.py",
        "plugins/gan.py",
        "stages/pipeline.py",
    )
    for name in (*expected, "stages/data/assets/mnist5k-train.parquet"):
        assert f"vqgen/{name}" in names, name
    assert not [n for n in names if n.startswith(("vqgen/tests/", "vqgen/benchmarks/", "vqgen/examples/"))]


# --- the picture of the house (docs/house.md) names the rooms there are --------------------------------------------


def house_rooms(root: Path = ROOT) -> tuple[set[str], set[str], set[str]]:
    """(the rooms on disk, the rooms in docs/house.md's table, the middle rooms in its picture). A room: every
    folder of stages/ with an __init__.py, stages/pipeline.py, and the other package folders and cli.py."""
    stages = root / "stages"
    on_disk = {f"stages/{p.name}/" for p in stages.iterdir() if (p / "__init__.py").is_file()}
    on_disk |= {"stages/pipeline.py", "cli.py"} | {f"{d}/" for d in PACKAGE_DIRS if d != "stages"}
    text = (root / "docs" / "house.md").read_text()
    table = {line.split("`")[1] for line in text.splitlines() if line.startswith("| `")}
    picture = text.split("```")[1]
    middle = next(line for line in picture.splitlines() if "middle:" in line).split("middle:")[0].split()
    return on_disk, table, set(middle)


def test_the_picture_of_the_house_names_every_room():
    on_disk, table, middle = house_rooms()
    assert table == on_disk, "docs/house.md's table of rooms differs from the folders"
    assert middle == set(MIDDLE), "docs/house.md's picture differs from the layer test's middle rooms"


def test_the_house_check_catches_a_room_missing_from_the_docs(tmp_path):
    for rel in ("stages/core", "stages/data", "stages/newroom", *PACKAGE_DIRS):
        (tmp_path / rel).mkdir(parents=True, exist_ok=True)
        (tmp_path / rel / "__init__.py").write_text("")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "house.md").write_text(
        "```\n  data   middle: x\n```\n| `stages/core/` | a |\n| `stages/data/` | b |\n"
    )
    on_disk, table, middle = house_rooms(tmp_path)
    assert on_disk - table == {
        "stages/newroom/",
        "stages/pipeline.py",
        "cli.py",
        "priors/",
        "plugins/",
        "command_line/",
    }
    assert middle == {"data"}
