"""`vqgen report RUN [--compare RUN2 ...]`: one self-contained RUN/report.html (stages/reporting/report.py)."""

from dataclasses import dataclass, field
from pathlib import Path

from vqgen.stages.reporting.report import write_report


@dataclass
class ReportConfig:
    run: str  # a run folder (tokenizer + prior-* folders) or a prior folder
    compare: list[str] = field(default_factory=list)  # other runs, overlaid and set beside it
    out: str | None = None  # default RUN/report.html


def run_report(cfg: ReportConfig) -> Path:
    """Write the report (rebuilt from the run's files each time) and return its path."""
    return write_report(Path(cfg.run), [Path(c) for c in cfg.compare], Path(cfg.out) if cfg.out else None)
