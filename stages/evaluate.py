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
  samples, and as many as the split holds for rFID): what a perfect generator scores at that sample size.
"""

import gzip
import json
import shutil
import struct
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from stages import fid
from stages import metrics as M
from stages.classifier import Classifier, ClassifierConfig, accuracy, load_or_train
from stages.data import EMBEDDED, IMAGE_SUFFIXES, DataConfig, load_image_splits, to_array, to_float
from stages.errors import UserError

Log = Callable[[str], None]


@dataclass
class EvaluateConfig:
    run_dir: str = "runs/demo"
    test_images: str | None = None  # folder of images (class subfolders = labels) or of MNIST idx files
    n_samples: int = 1000  # generated images per prior (and real training images for the floor)
    cfg_scale: float = 3.0  # classifier-free guidance for class-conditional priors: generate's default
    seed: int = 0  # sampling and the floor's choice of training images
    features: str = "auto"  # auto (Inception if it loads, else the classifier) | inception | classifier
    device: str = "cpu"
    batch_size: int = 250
    classifier_epochs: int = 30
    classifier_width: int = 32
    pr_k: int = 3  # nearest neighbour that sets the precision/recall radii (Kynkäänniemi et al. use 3)
    overwrite: bool = False


@dataclass
class EvalData:
    train: torch.Tensor  # (N, C, S, S) uint8: the run's training split
    train_labels: torch.Tensor  # (N,) long, -1 = unlabelled
    eval: torch.Tensor  # (M, C, S, S) uint8: the evaluation split
    eval_labels: torch.Tensor
    eval_name: str  # where the evaluation split comes from, for the report
    dataset_tag: str  # names the classifier features: classifier-<tag>
    class_names: list[str]


# --- the run and its data ------------------------------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise UserError(f"--device must be cpu or cuda, got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here; use --device cpu")
    return torch.device(name)


def run_data_config(run: Path) -> DataConfig:
    """The data settings the run was made with (RUN/run_config.json), or a one-line error."""
    if not run.is_dir():
        raise UserError(f"--run {run}: no such run folder; create it with `cli.py tokenize --run {run}`")
    if not (run / "tokenizer" / "model.safetensors").is_file():
        raise UserError(
            f"--run {run}: no trained tokenizer in {run / 'tokenizer'}; run `cli.py tokenize` first"
        )
    try:
        data = json.loads((run / "run_config.json").read_text())["data"]
        fields = DataConfig.__dataclass_fields__
        return DataConfig(**{k: v for k, v in data.items() if k in fields})
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"--run {run}: cannot read the data settings in run_config.json ({exc})") from None


def read_idx(path: Path) -> np.ndarray:
    """A uint8 IDX array (the MNIST file format, optionally gzipped): 0, 0, 0x08, ndim, ndim big-endian sizes."""
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08":
        raise UserError(f"--test-images {path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    array = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(dims)):
        raise UserError(f"--test-images {path}: truncated IDX file ({array.size} values for shape {dims})")
    return array.reshape(dims)


def _fit(images: list[np.ndarray] | np.ndarray, cfg: DataConfig) -> torch.Tensor:
    """(N, H, W) or a list of HxW(xC) uint8 arrays -> (N, C, S, S) uint8 in the run's size and channels."""
    size, c = cfg.image_size, cfg.channels
    if isinstance(images, np.ndarray) and images.shape[1:] == (size, size) and c == 1:
        return torch.from_numpy(images.copy())[:, None]
    return torch.from_numpy(np.stack([to_array(Image.fromarray(a), size, c) for a in images]))


def load_test_images(
    path: Path, cfg: DataConfig, class_names: list[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C, S, S) uint8 and (N,) labels (-1 = unknown) from an idx folder or a folder of image files."""
    if not path.is_dir():
        raise UserError(f"--test-images {path}: not a folder (give a folder of images or of MNIST idx files)")
    idx = sorted(path.glob("*images-idx3-ubyte*"))
    if len(idx) > 1:
        raise UserError(f"--test-images {path}: several idx image files ({', '.join(p.name for p in idx)})")
    if idx:
        images = read_idx(idx[0])
        label_files = sorted(path.glob(idx[0].name.replace("images-idx3", "labels-idx1")))
        labels = read_idx(label_files[0]).astype(np.int64) if label_files else np.full(len(images), -1)
        if len(labels) != len(images):
            raise UserError(f"--test-images {path}: {len(images)} images but {len(labels)} labels")
        return _fit(images, cfg), torch.from_numpy(labels)
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    arrays, labels = [], []
    for f in files:
        try:
            with Image.open(f) as image:
                arrays.append(to_array(image, cfg.image_size, cfg.channels))
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
            continue
        parent = f.parent.relative_to(path).as_posix()
        labels.append(class_names.index(parent) if parent in class_names else -1)
    if not arrays:
        raise UserError(
            f"--test-images {path}: no readable images (looked for {', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    return torch.from_numpy(np.stack(arrays)), torch.tensor(labels, dtype=torch.long)


def load_eval_data(cfg: EvaluateConfig, data_cfg: DataConfig) -> EvalData:
    from stages.tokenize import pixel_tensor

    splits = load_image_splits(data_cfg)
    labels = lambda ds: torch.as_tensor(np.asarray(ds.with_format("numpy")[:]["label"]), dtype=torch.long)  # noqa: E731
    train, train_labels = pixel_tensor(splits.train), labels(splits.train)
    if cfg.test_images:
        images, image_labels = load_test_images(Path(cfg.test_images), data_cfg, splits.class_names)
        name = f"test images {cfg.test_images}"
    else:
        images, image_labels = pixel_tensor(splits.heldout), labels(splits.heldout)
        name = f"held-out split of {data_cfg.dataset}"
    tag = (
        EMBEDDED
        if data_cfg.dataset == EMBEDDED
        else Path(data_cfg.dataset.rstrip("/")).name.replace("/", "-")
    )
    return EvalData(train, train_labels, images, image_labels, name, tag, splits.class_names)


# --- the classifier (features and class accuracy) ------------------------------------------------------------
def eval_classifier(
    run: Path, data: EvalData, cfg: EvaluateConfig, log: Log
) -> tuple[Classifier | None, dict]:
    """The run's classifier, trained on its labelled training images once and cached in RUN/eval-classifier
    (retrained when the cache was made with other settings); None for an unlabelled dataset."""
    keep = data.train_labels >= 0
    if len(data.class_names) < 2 or int(keep.sum()) < 2:
        return None, {}
    path = run / "eval-classifier"
    settings = {
        "dataset": data.dataset_tag,
        "epochs": cfg.classifier_epochs,
        "width": cfg.classifier_width,
        "train_images": int(keep.sum()),
        "num_classes": len(data.class_names),
    }
    info_file = path / "training.json"
    cached = json.loads(info_file.read_text()) if info_file.is_file() else None
    if cached != settings:
        if path.exists():
            log(f"classifier: the cache in {path} was made with other settings; retraining")
            shutil.rmtree(path)
        log(f"classifier: training on {settings['train_images']} images ({cfg.classifier_epochs} epochs)...")
    config = ClassifierConfig(
        num_classes=len(data.class_names),
        channels=data.train.shape[1],
        image_size=data.train.shape[-1],
        width=cfg.classifier_width,
    )
    start = time.perf_counter()
    model = load_or_train(
        path, to_float(data.train[keep]), data.train_labels[keep], config, cfg.classifier_epochs
    )
    if cached != settings:
        M.write_json(settings, info_file)
    labelled = data.eval_labels >= 0
    eval_acc = (
        accuracy(model, to_float(data.eval[labelled]), data.eval_labels[labelled]) if labelled.any() else None
    )
    info = {**settings, "path": str(path), "seconds": time.perf_counter() - start, "eval_accuracy": eval_acc}
    return model, info


# --- tokenizer --------------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate_tokenizer(
    tokenizer, pixels: torch.Tensor, space, real_feats, batch_size: int
) -> tuple[dict, torch.Tensor]:
    """Reconstruction metrics over (N, C, S, S) uint8 images, the rFID, and the (N, h, w) codes."""
    tokenizer.eval()
    device = next(tokenizer.parameters()).device
    k = tokenizer.config.quantizer.codebook_size
    counts = torch.zeros(k, dtype=torch.long)
    sums = {"psnr": 0.0, "ssim": 0.0, "l1": 0.0, "mse": 0.0}
    codes, recon_feats, seconds = [], [], 0.0
    for i in range(0, pixels.shape[0], batch_size):
        x = to_float(pixels[i : i + batch_size]).to(device)
        start = time.perf_counter()
        c = tokenizer.encode(x)
        recon = tokenizer.decode(c)
        seconds += time.perf_counter() - start
        counts += torch.bincount(c.flatten().cpu(), minlength=k)
        codes.append(c.cpu())
        for name, fn in (
            ("psnr", M.psnr_per_image),
            ("ssim", M.ssim_per_image),
            ("l1", M.l1_per_image),
            ("mse", M.mse_per_image),
        ):
            sums[name] += float(fn(recon, x).sum())
        if space is not None:
            recon_feats.append(fid.extract_features(space, recon, batch_size))
    n = pixels.shape[0]
    results = {name: total / n for name, total in sums.items()}
    results.update(M.codebook_stats(counts), eval_images=n, images_per_s=n / max(seconds, 1e-9))
    results["rfid"] = fid.frechet_distance(real_feats, torch.cat(recon_feats)) if space is not None else None
    return results, torch.cat(codes)


# --- priors -----------------------------------------------------------------------------------------------------
@torch.no_grad()
def sample_and_measure(prior, tokenizer, cfg: EvaluateConfig, space, classifier) -> tuple[dict, torch.Tensor]:
    """Sample cfg.n_samples images with a fixed seed (balanced classes for a conditional prior); return their
    features, class predictions and sampling speed, and the first 100 images for a preview grid."""
    k = prior.config.num_classes
    labels = torch.arange(cfg.n_samples) % k if k else None
    generator = torch.Generator(device=prior.device).manual_seed(cfg.seed)
    feats, preds, preview, seconds = [], [], [], 0.0
    for i in range(0, cfg.n_samples, cfg.batch_size):
        lab = labels[i : i + cfg.batch_size] if labels is not None else None
        b = min(cfg.batch_size, cfg.n_samples - i)
        start = time.perf_counter()
        grids = prior.sample(b, lab, cfg_scale=cfg.cfg_scale if k else 1.0, generator=generator)
        seconds += time.perf_counter() - start
        images = tokenizer.decode(grids.to(next(tokenizer.parameters()).device))
        if space is not None:
            feats.append(fid.extract_features(space, images, cfg.batch_size))
        if classifier is not None and k == classifier.config.num_classes:
            preds.append(classifier(images.to(next(classifier.parameters()).device)).argmax(1).cpu())
        preview.append(images[: max(0, 100 - sum(p.shape[0] for p in preview))].cpu())
    out = {
        "tokens_per_s": cfg.n_samples * prior.config.seq_len / max(seconds, 1e-9),
        "sampling_seconds": seconds,
        "feats": torch.cat(feats) if feats else None,
        "labels": labels,
        "preds": torch.cat(preds) if preds else None,
    }
    return out, torch.cat(preview)


def nll(
    prior, codes: torch.Tensor, labels: torch.Tensor, batch_size: int, image_dims: int, prefix: str
) -> dict:
    """NLL of (N, h, w) codes, labelled ones conditioned on their label and the rest on the null label."""
    from stages.train_prior import evaluate_prior

    k = prior.config.num_classes
    cond = labels.masked_fill((labels < 0) | (labels >= k), k) if k else None
    r = evaluate_prior(prior, codes, cond, batch_size, image_dims)
    return {
        f"{prefix}_bits_per_token": r["val_bits_per_token"],
        f"{prefix}_bits_per_dim": r["val_bits_per_dim"],
        f"{prefix}_examples": r["val_examples"],
    }


def evaluate_priors(run: Path, tokenizer, ctx: dict, cfg: EvaluateConfig, log: Log) -> tuple[dict, dict]:
    """Every RUN/prior-* folder with weights: {name: metrics}, and {folder: reason} for the ones skipped."""
    from priors import load_prior
    from stages.generate import check_pair
    from stages.train_prior import load_codes

    codes = load_codes(run / "codes") if (run / "codes" / "vqgen.json").is_file() else None
    tc = tokenizer.config
    image_dims = tc.channels * tc.image_size**2
    results, skipped = {}, {}
    for folder in sorted(p for p in run.glob("prior-*") if p.is_dir()):
        if not (folder / "model.safetensors").is_file():
            skipped[folder.name] = "no model.safetensors (not trained yet?)"
            continue
        try:
            prior = load_prior(folder).to(ctx["device"]).eval()
            check_pair(prior, tokenizer)
        except UserError as exc:
            skipped[folder.name] = str(exc)
            continue
        name = folder.name.removeprefix("prior-")
        log(f"{name}: NLL and {cfg.n_samples} samples...")
        r = {
            "prior_type": prior.config.prior_type,
            "parameters": sum(p.numel() for p in prior.parameters()),
            "conditional": prior.config.num_classes > 0,
        }
        r.update({"val_bits_per_token": None, "val_bits_per_dim": None, "val_examples": 0})
        if codes is not None:
            r.update(nll(prior, codes.val_codes, codes.val_labels, cfg.batch_size, image_dims, "val"))
        r.update({"test_bits_per_token": None, "test_bits_per_dim": None, "test_examples": 0})
        if cfg.test_images:
            r.update(nll(prior, ctx["eval_codes"], ctx["eval_labels"], cfg.batch_size, image_dims, "test"))
        s, preview = sample_and_measure(prior, tokenizer, cfg, ctx["space"], ctx["classifier"])
        M.save_png(M.image_grid(preview, nrow=10), run / "eval" / f"samples-{name}.png")
        r.update(
            n_samples=cfg.n_samples,
            cfg_scale=cfg.cfg_scale if r["conditional"] else None,
            tokens_per_s=s["tokens_per_s"],
            sampling_seconds=s["sampling_seconds"],
        )
        r.update(gfid=None, precision=None, recall=None, class_accuracy=None, worst_class_accuracy=None)
        if s["feats"] is not None:
            r["gfid"] = fid.frechet_distance(ctx["real_feats"], s["feats"])
            r["precision"], r["recall"] = fid.precision_recall(ctx["real_feats"], s["feats"], cfg.pr_k)
        if s["preds"] is not None:
            hit = (s["preds"] == s["labels"]).double()
            r["class_accuracy"] = float(hit.mean())
            r["worst_class_accuracy"] = min(float(hit[s["labels"] == c].mean()) for c in s["labels"].unique())
        results[name] = r
    return results, skipped


# --- the whole command -------------------------------------------------------------------------------------------
def floor(data: EvalData, space, real_feats, cfg: EvaluateConfig) -> dict:
    """What real training images score against the evaluation split: with as many images as each prior samples
    (the floor of gFID, precision and recall) and with as many as the split holds (the floor of rFID), since a
    Fréchet distance estimated from fewer images is biased upwards."""
    if space is None:
        return {
            "fid": None,
            "precision": None,
            "recall": None,
            "n_train_images": 0,
            "rfid": None,
            "n_train_images_rfid": 0,
        }
    n, n_rfid = min(cfg.n_samples, data.train.shape[0]), min(data.eval.shape[0], data.train.shape[0])
    pick = torch.randperm(data.train.shape[0], generator=torch.Generator().manual_seed(cfg.seed))
    feats = fid.extract_features(space, data.train[pick[: max(n, n_rfid)]], cfg.batch_size)
    precision, recall = fid.precision_recall(real_feats, feats[:n], cfg.pr_k)
    return {
        "fid": fid.frechet_distance(real_feats, feats[:n]),
        "precision": precision,
        "recall": recall,
        "n_train_images": n,
        "rfid": fid.frechet_distance(real_feats, feats[:n_rfid]),
        "n_train_images_rfid": n_rfid,
    }


def validate(cfg: EvaluateConfig) -> None:
    if cfg.n_samples <= cfg.pr_k:
        raise UserError(f"--n-samples must be more than {cfg.pr_k} (the precision/recall neighbours)")
    if cfg.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {cfg.batch_size}")
    if cfg.classifier_epochs < 1 or cfg.classifier_width < 1:
        raise UserError("--classifier-epochs and --classifier-width must be at least 1")


def run_evaluate(cfg: EvaluateConfig, log: Log = print) -> dict:
    """Evaluate RUN's tokenizer and priors; writes RUN/eval/metrics.json and report.md; returns the metrics."""
    from stages.hub import load_tokenizer

    validate(cfg)
    run = Path(cfg.run_dir)
    data_cfg = run_data_config(run)
    out = run / "eval"
    if (out / "metrics.json").exists() and not cfg.overwrite:
        raise UserError(f"{out} already holds an evaluation; pass --overwrite to replace it")
    device = resolve_device(cfg.device)
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
    tok, eval_codes = evaluate_tokenizer(tokenizer, data.eval, space, real_feats, cfg.batch_size)
    tok["fingerprint"] = tokenizer.fingerprint()
    ctx = {
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
        "tokenizer": tok,
        "priors": priors,
        "skipped_priors": skipped,
        "settings": asdict(cfg),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "seconds": time.perf_counter() - started,
    }
    report = render_report(metrics)
    M.write_json(metrics, out / "metrics.json")
    write_text(report, out / "report.md")
    log(report)
    return metrics


def write_text(text: str, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


# --- report and comparison -----------------------------------------------------------------------------------------
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
        s = m["settings"]
        lines += [
            "## Priors",
            "",
            f"{s['n_samples']} samples each, seed {s['seed']}, guidance scale {s['cfg_scale']} "
            f"(class-conditional priors), batch {s['batch_size']}, {m['device']}, {m['threads']} threads.",
            "",
            *prior_table([{"name": k, **r, "floor_fid": fl["fid"]} for k, r in m["priors"].items()]),
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
        "| tokens/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        out.append(
            f"| {r['name']} | {_f(r['val_bits_per_token'], '.3f')} | {_f(r['val_bits_per_dim'], '.4f')} | "
            f"{_f(r['gfid'], '.3f')} | {_f(r['floor_fid'], '.3f')} | {_f(r['precision'], '.3f')} | "
            f"{_f(r['recall'], '.3f')} | {_f(r['class_accuracy'], '.1%')} | "
            f"{_f(r['worst_class_accuracy'], '.1%')} | {r['tokens_per_s']:,.0f} |"
        )
    return out


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
    if (out / "compare.md").exists() and not cfg.evaluate.overwrite:
        raise UserError(f"{out / 'compare.md'} already exists; pass --overwrite or choose another --out")
    evaluated = {}
    for run in runs:
        file = run / "eval" / "metrics.json"
        if file.is_file() and not cfg.evaluate.overwrite:
            log(f"using the evaluation in {file}")
            evaluated[run] = json.loads(file.read_text())
        else:
            evaluated[run] = run_evaluate(replace(cfg.evaluate, run_dir=str(run)), log)
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
                label = name if len(runs) == 1 else f"{run.name}/{name}"
                rows.append(
                    {
                        "name": label,
                        "run": str(run),
                        "features": m["features"],
                        "floor_fid": m["floor"]["fid"],
                        **m["priors"][name],
                    }
                )
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
    M.write_json({"features": spaces[0], "rows": rows}, out / "compare.json")
    key = next((k for k in ("gfid", "class_accuracy") if all(r[k] is not None for r in rows)), None)
    if key is not None:
        ylabel = (
            f"gFID ({spaces[0]}), lower is better" if key == "gfid" else "class accuracy, higher is better"
        )
        points = [(r["tokens_per_s"], r[key], r["name"]) for r in rows]
        M.scatter_plot(points, "sampling tokens/s", ylabel, out / "compare.png")
    log(text + (f"wrote {out / 'compare.md'}, compare.json" + (", compare.png" if key else "")))
    return rows
