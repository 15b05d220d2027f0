"""`cli.py evaluate`: every stage of a run measured by one command, offline, PyTorch only.

    RUN/eval/metrics.json     every figure below, the settings, and the name of the feature space used
    RUN/eval/report.md        the same as markdown tables (also printed)
    RUN/eval/samples-*.png    the first generated images of each prior
    RUN/eval-classifier/      the classifier that gives the features and the class accuracy (trained once, cached)

The evaluation split is the run's held-out split, or `--test-images` (a folder of images, class subfolders = labels,
or a folder with MNIST's idx files). On it:
- tokenizer: PSNR, SSIM, L1, MSE, codebook usage, perplexity, dead codes, rFID (real vs reconstructed images);
- every RUN/prior-*: NLL in bits per token and per image dimension on RUN/codes' held-out codes (and on the test
  images' codes), and on `n_samples` images sampled with a fixed seed: gFID, precision and recall against the
  evaluation split, the classifier's accuracy on the requested class (class-conditional priors), sampling tokens/s;
- the floor: the same distances for real training images against the evaluation split (as many as each prior
  samples, and as many as the split holds for rFID): what a perfect generator scores at that sample size;
- near-blank samples and copies of training images (evaluation/sample_checks.py): every prior's share of each and
  its samples' nearest-training distances, beside the same figures of the evaluation split (`sample_checks`).
"""

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from vqgen.stages.artifacts.runs import hold_lock, locked_command
from vqgen.stages.core.device import resolve_device
from vqgen.stages.core.errors import UserError
from vqgen.stages.core.files import write_json, write_text
from vqgen.stages.evaluation import fid
from vqgen.stages.evaluation import metrics as M
from vqgen.stages.evaluation.classifier import eval_classifier
from vqgen.stages.evaluation.priors import evaluate_priors, floor
from vqgen.stages.evaluation.report import prior_table, render_report, tokenizer_table
from vqgen.stages.evaluation.sample_checks import run_reference
from vqgen.stages.evaluation.settings import EvaluateConfig, load_eval_data, run_data_config
from vqgen.stages.evaluation.tokenizer import evaluate_tokenizer

Log = Callable[[str], None]


def validate(cfg: EvaluateConfig) -> None:
    if cfg.n_samples <= cfg.pr_k:
        raise UserError(f"--n-samples must be more than {cfg.pr_k} (the precision/recall neighbours)")
    if cfg.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {cfg.batch_size}")
    if cfg.classifier_epochs < 1 or cfg.classifier_width < 1:
        raise UserError("--classifier-epochs and --classifier-width must be at least 1")


@locked_command
def run_evaluate(cfg: EvaluateConfig, log: Log = print) -> dict:
    """Evaluate RUN's tokenizer and priors; writes RUN/eval/metrics.json and report.md; returns the metrics."""
    from vqgen.stages.artifacts.models import load_tokenizer

    validate(cfg)
    device = resolve_device(cfg.device)
    run = Path(cfg.run_dir)
    data_cfg = run_data_config(run)
    out = _eval_folder(run, cfg.overwrite)
    started = time.perf_counter()
    tokenizer = load_tokenizer(run / "tokenizer").to(device).eval()
    data = load_eval_data(cfg, data_cfg)
    if data.eval.shape[0] <= cfg.pr_k:
        raise UserError(
            f"the evaluation split has {data.eval.shape[0]} images; at least {cfg.pr_k + 1} are needed"
        )
    torch.manual_seed(cfg.seed)
    classifier, clf_info = eval_classifier(run, data, cfg, log)
    classifier = classifier.to(device) if classifier is not None else None
    space = fid.choose_space(cfg.features, device, classifier, f"classifier-{data.dataset_tag}", log)
    real_feats = fid.extract_features(space, data.eval, cfg.batch_size) if space is not None else None
    out.mkdir(parents=True, exist_ok=True)
    log(f"tokenizer: {data.eval.shape[0]} images of the {data.eval_name}...")
    tok, eval_codes = evaluate_tokenizer(
        tokenizer, data.eval.batches(cfg.batch_size), cfg.batch_size, space, real_feats
    )
    tok["fingerprint"] = tokenizer.fingerprint()
    reference = run_reference(tokenizer, data.train, eval_codes, cfg.batch_size, cfg.seed)
    ctx = {
        "sample_reference": reference,
        "device": device,
        "space": space,
        "classifier": classifier,
        "real_feats": real_feats,
        "eval_codes": eval_codes,
        "eval_labels": data.eval_labels,
    }
    priors, skipped = evaluate_priors(run, tokenizer, ctx, cfg, log)
    metrics = {
        "run": str(run),
        "features": space.name if space is not None else None,
        "feature_dim": space.dim if space is not None else None,
        "eval_split": data.eval_name,
        "eval_images": int(data.eval.shape[0]),
        "classifier": clf_info or None,
        "floor": floor(data, space, real_feats, cfg),
        "sample_checks": reference.summary,
        "tokenizer": tok,
        "priors": priors,
        "skipped_priors": skipped,
        "settings": asdict(cfg),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "seconds": time.perf_counter() - started,
    }
    _write_evaluation(metrics, out, log)
    return metrics


def _eval_folder(run: Path, overwrite: bool) -> Path:
    """RUN/eval, locked while the command runs; an evaluation already there is replaced only with --overwrite."""
    out = run / "eval"
    hold_lock(out)  # RUN/eval stays locked while the command runs
    if (out / "metrics.json").exists() and not overwrite:
        raise UserError(f"{out} already holds an evaluation; pass --overwrite to replace it")
    return out


def _write_evaluation(metrics: dict, out: Path, log: Log) -> None:
    """RUN/eval/metrics.json and report.md; the report shown."""
    report = render_report(metrics)
    write_json(metrics, out / "metrics.json")
    write_text(report, out / "report.md")
    log(report)


# --- report and comparison -----------------------------------------------------------------------------------------


@dataclass
class CompareConfig:
    paths: list[str]  # run folders (all their priors) and RUN/prior-* folders
    out: str | None = None  # default: RUN/eval when every path lies in one run
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)  # for runs not evaluated yet


def compare_targets(paths: list[str]) -> list[tuple[Path, str | None]]:
    """(run, prior name) for every path; the name is None for a run folder (all of its priors)."""
    targets = []
    for p in map(Path, paths):
        if (p / "tokenizer").is_dir():
            targets.append((p, None))
        elif p.name.startswith("prior-") and (p.parent / "tokenizer").is_dir():
            targets.append((p.parent, p.name.removeprefix("prior-")))
        else:
            raise UserError(f"--compare {p}: neither a run folder (with tokenizer/) nor a RUN/prior-* folder")
    return targets


def _compare_rows(targets: list[tuple[Path, str | None]], evaluated: dict, multiple_runs: bool) -> list[dict]:
    """One row per (run, prior) named by the targets, from each run's evaluation."""
    rows, seen = [], set()
    for run, only in targets:
        m = evaluated[run]
        for name in [only] if only else list(m["priors"]):
            if name not in m["priors"]:
                why = m["skipped_priors"].get(
                    f"prior-{name}", "not in that evaluation; evaluate again with --overwrite"
                )
                raise UserError(f"{run}/prior-{name}: no evaluation in {run}/eval/metrics.json ({why})")
            if (run, name) not in seen:
                seen.add((run, name))
                label = name if not multiple_runs else f"{run.name}/{name}"
                rows.append(
                    {
                        "name": label,
                        "run": str(run),
                        "features": m["features"],
                        "floor_fid": m["floor"]["fid"],
                        **m["priors"][name],
                    }
                )
    return rows


# The evaluation settings that change its figures (not where or how fast it runs).
RESULT_SETTINGS = (
    "test_images",
    "n_samples",
    "cfg_scale",
    "seed",
    "features",
    "classifier_epochs",
    "classifier_width",
    "stream_reference",
    "pr_k",
)


def settings_changed(stored: dict, asked: EvaluateConfig) -> list[str]:
    """`name=stored (asked: value)` for every setting of RESULT_SETTINGS where an evaluation stored with the
    settings `stored` differs from the one `asked` for."""
    return [
        f"{name}={stored.get(name)!r} (asked: {getattr(asked, name)!r})"
        for name in RESULT_SETTINGS
        if stored.get(name) != getattr(asked, name)
    ]


@locked_command
def run_compare(cfg: CompareConfig, log: Log = print) -> list[dict]:
    """One side-by-side table (compare.md, compare.json) and a quality-vs-speed plot (compare.png) over the
    priors named by cfg.paths; runs without RUN/eval/metrics.json (or all, with --overwrite) are evaluated first."""
    if not cfg.paths:
        raise UserError(
            "--compare needs run or prior folders (or --run RUN to compare the priors of one run)"
        )
    targets = compare_targets(cfg.paths)
    runs = list(dict.fromkeys(run for run, _ in targets))
    if cfg.out is None and len(runs) > 1:
        raise UserError("--out is needed to compare several runs (the folder for compare.md and compare.png)")
    out = Path(cfg.out) if cfg.out else runs[0] / "eval"
    hold_lock(out)
    if (out / "compare.md").exists() and not cfg.evaluate.overwrite:
        raise UserError(f"{out / 'compare.md'} already exists; pass --overwrite or choose another --out")
    evaluated = {}
    for run in runs:
        file = run / "eval" / "metrics.json"
        if file.is_file() and not cfg.evaluate.overwrite:
            evaluated[run] = json.loads(file.read_text())
            changed = settings_changed(evaluated[run].get("settings") or {}, cfg.evaluate)
            differs = (
                f"; it was made with {', '.join(changed)}: --overwrite evaluates again" if changed else ""
            )
            log(f"using the evaluation in {file}{differs}")
        else:
            evaluated[run] = run_evaluate(replace(cfg.evaluate, run_dir=str(run)), log)
    rows = _compare_rows(targets, evaluated, multiple_runs=len(runs) > 1)
    if not rows:
        raise UserError("nothing to compare: the runs have no evaluated priors")
    spaces = sorted({str(r["features"] or "none") for r in rows})
    if len(spaces) > 1:
        raise UserError(
            f"the evaluations used different features ({', '.join(spaces)}); evaluate again with "
            "--overwrite and the same --features"
        )
    lines = [f"# Priors compared (features: {spaces[0]})", "", *prior_table(rows), ""]
    if len(runs) > 1:
        tok = [(run.name, evaluated[run]["tokenizer"], evaluated[run]["floor"]) for run in runs]
        lines += ["## Tokenizers", "", *tokenizer_table(tok), ""]
    text = "\n".join(lines)
    out.mkdir(parents=True, exist_ok=True)
    write_text(text, out / "compare.md")
    write_json({"features": spaces[0], "rows": rows}, out / "compare.json")
    key = next((k for k in ("gfid", "class_accuracy") if all(r[k] is not None for r in rows)), None)
    if key is not None:
        ylabel = (
            f"gFID ({spaces[0]}), lower is better" if key == "gfid" else "class accuracy, higher is better"
        )
        points = [(r["tokens_per_s"], r[key], r["name"]) for r in rows]
        M.scatter_plot(points, "sampling tokens/s", ylabel, out / "compare.png")
    log(text + (f"wrote {out / 'compare.md'}, compare.json" + (", compare.png" if key else "")))
    return rows
