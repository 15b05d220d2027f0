"""MkDocs hook: the command-line reference, written at build time from the typer app itself.

Each command's section is its `--help` exactly as a terminal 80 columns wide shows it (click's own rendering
through typer), so the page cannot drift from the code. The page is generated into the build; nothing is written
into docs/.
"""

from mkdocs.structure.files import File

PAGE = "reference/cli.md"
WIDTH = 80


def render_help(app, args: list[str]) -> str:
    """`vqgen ARGS --help` as a terminal of WIDTH columns prints it (no colour)."""
    from typer.testing import CliRunner

    result = CliRunner().invoke(
        app,
        [*args, "--help"],
        prog_name="vqgen",
        env={"COLUMNS": str(WIDTH), "NO_COLOR": "1", "TERM": "dumb"},
    )
    if result.exit_code != 0:
        raise RuntimeError(f"vqgen {' '.join(args)} --help failed: {result.output}")
    return "\n".join(line.rstrip() for line in result.output.splitlines()).strip("\n")


def cli_reference() -> str:
    """The page: the app's own help, then one section per command in the order the app declares them."""
    import typer
    from vqgen.cli import app

    group = typer.main.get_command(app)
    lines = [
        "# Command line",
        "",
        "Generated from the typer app when the site is built: each block is the command's `--help` at "
        f"{WIDTH} columns. `vqgen CMD`, `python -m vqgen CMD` and `python cli.py CMD` in a clone are the same app.",
        "",
        "```text",
        render_help(app, []),
        "```",
        "",
    ]
    for name, command in group.commands.items():
        if command.hidden:
            continue
        summary = (command.help or "").strip().split("\n\n")[0].replace("\n", " ")
        lines += [f"## `vqgen {name}`", "", summary, "", "```text", render_help(app, [name]), "```", ""]
    return "\n".join(lines)


def on_files(files, config):
    files.append(File.generated(config, PAGE, content=cli_reference()))
    return files
