"""Markdown tables of evaluation metrics: one run's report, and the tables `evaluate --compare` writes."""

from pathlib import Path


def _f(value, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def render_report(m: dict) -> str:
    """The markdown report of one run's metrics.json."""
    t, fl, clf = m["tokenizer"], m["floor"], m["classifier"]
    feats = (
        f"{m['features']}** ({m['feature_dim']}-d)" if m["features"] else "none** (no labels, no Inception)"
    )
    lines = [
        f"# Evaluation of {m['run']}",
        "",
        f"Features: **{feats}; Fréchet distances in different feature spaces are not comparable.",
        f"Evaluation split: {m['eval_split']} ({m['eval_images']} images).",
    ]
    if clf:
        lines.append(
            f"Classifier: {clf['epochs']} epoch(s) on {clf['train_images']} training images; accuracy on the "
            f"evaluation split {_f(clf['eval_accuracy'], '.2%')}."
        )
    lines += [
        f"Floor, real training images against the evaluation split: FD {_f(fl['fid'], '.3f')}, precision "
        f"{_f(fl['precision'], '.3f')}, recall {_f(fl['recall'], '.3f')} with {fl['n_train_images']} images (as "
        f"sampled per prior); FD {_f(fl['rfid'], '.3f')} with {fl['n_train_images_rfid']} (for rFID).",
        "",
        "## Tokenizer",
        "",
        *tokenizer_table([(Path(m["run"]).name, t, fl)]),
        "",
    ]
    if m["priors"]:
        s, c = m["settings"], m.get("sample_checks")
        lines += [
            "## Priors",
            "",
            f"{s['n_samples']} samples each, seed {s['seed']}, guidance scale "
            f"{s['cfg_scale'] if s['cfg_scale'] is not None else 'and temperature of each prior (its defaults)'} "
            f"(class-conditional priors), batch {s['batch_size']}, {m['device']}, {m['threads']} threads.",
            "",
            *prior_table([{"name": k, **r, "floor_fid": fl["fid"]} for k, r in m["priors"].items()]),
            "",
        ]
        if c:
            lines += [
                f"Near-blank: pixel spread under {c['blank_threshold']:.3f}; copy: nearer a reconstructed training "
                f"image than {c['copy_threshold']:.4f} RMS (evaluation/sample_checks.py). The evaluation split's "
                f"reconstructions: {c['eval_near_blank_share']:.1%} near-blank, nearest training image at "
                f"{c['eval_nearest_train_rms_median']:.4f} RMS (median), {c['eval_nearest_train_rms_min']:.4f} (min).",
                "",
            ]
    for name, reason in m["skipped_priors"].items():
        lines.append(f"Skipped {name}: {reason}")
    return "\n".join(lines).rstrip() + "\n"


def tokenizer_table(rows: list[tuple[str, dict, dict]]) -> list[str]:
    """Markdown rows for (run name, tokenizer metrics, floor) triples."""
    out = [
        "| run | PSNR (dB) | SSIM | L1 | MSE | codebook usage | perplexity | dead codes | rFID | FD floor | images/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, t, fl in rows:
        out.append(
            f"| {name} | {t['psnr']:.2f} | {t['ssim']:.4f} | {t['l1']:.4f} | {t['mse']:.5f} | "
            f"{t['codebook_usage']:.1%} | {t['perplexity']:.1f} | {t['dead_codes']} | {_f(t['rfid'], '.3f')} | "
            f"{_f(fl['rfid'], '.3f')} | {t['images_per_s']:,.0f} |"
        )
    return out


def prior_table(rows: list[dict]) -> list[str]:
    out = [
        "| prior | bits/token | bits/dim | gFID | FD floor | precision | recall | class accuracy | worst class "
        "| guidance | temperature | tokens/s | near-blank | copies | nearest train (RMS) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        out.append(
            f"| {r['name']} | {_f(r['val_bits_per_token'], '.3f')} | {_f(r['val_bits_per_dim'], '.4f')} | "
            f"{_f(r['gfid'], '.3f')} | {_f(r['floor_fid'], '.3f')} | {_f(r['precision'], '.3f')} | "
            f"{_f(r['recall'], '.3f')} | {_f(r['class_accuracy'], '.1%')} | "
            f"{_f(r['worst_class_accuracy'], '.1%')} | {_f(r.get('cfg_scale'), 'g')} | "
            f"{_f(r.get('temperature'), 'g')} | {r['tokens_per_s']:,.0f} | {_f(r.get('near_blank_share'), '.1%')} | "
            f"{_f(r.get('copy_share'), '.1%')} | {_f(r.get('nearest_train_rms_median'), '.4f')} |"
        )
    return out
