"""MkDocs hook: the nav lists every page the site is meant to have; pages not written yet are left out (so
`--strict` passes while they are missing), and any page under guides/ that the nav does not name is added to
the Guides section under its own first heading."""

from pathlib import Path

GENERATED = {"reference/cli.md"}  # written at build time by cli_reference.py


def _present(entry, docs: Path):
    """The nav entry with the pages whose file is missing taken out (None when nothing of it is left)."""
    if isinstance(entry, str):
        return entry if entry in GENERATED or (docs / entry).is_file() else None
    if isinstance(entry, dict):
        ((title, value),) = entry.items()
        if isinstance(value, list):
            kept = [e for e in (_present(v, docs) for v in value) if e is not None]
            return {title: kept} if kept else None
        return (
            entry
            if (value.startswith(("http://", "https://")) or value in GENERATED or (docs / value).is_file())
            else None
        )
    return None


def _paths(entry) -> set[str]:
    if isinstance(entry, str):
        return {entry}
    if isinstance(entry, dict):
        return set().union(*(_paths(v) for v in entry.values()))
    if isinstance(entry, list):
        return set().union(*(_paths(v) for v in entry))
    return set()


def _title(page: Path) -> str:
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return page.stem.replace("-", " ").capitalize()


def on_config(config):
    docs = Path(config["docs_dir"])
    nav = [e for e in (_present(e, docs) for e in config["nav"] or []) if e is not None]
    named = _paths(nav)
    extra = [
        {_title(p): p.relative_to(docs).as_posix()}
        for p in sorted((docs / "guides").glob("*.md"))
        if p.relative_to(docs).as_posix() not in named
    ]
    for entry in nav:
        if isinstance(entry, dict) and "Guides" in entry:
            entry["Guides"].extend(extra)
    config["nav"] = nav
    return config
