"""Augmented code views: the codes format holds them (a view index per row), `train-prior` draws one per image and
step, exactly again on resume; a view the tokenizer cannot encode is one line, exit 2."""

import pytest
import torch
from conftest import TINY_TOKENIZER_FLAGS, assert_user_error, run_cli
from vqgen.priors.gru import GRUPrior, GRUPriorConfig
from vqgen.stages.artifacts.codes import VIEWS, check_views, load_codes, write_codes
from vqgen.stages.artifacts.models import load_tokenizer
from vqgen.stages.core.errors import UserError
from vqgen.stages.data.images import DataConfig, load_image_splits, to_float
from vqgen.stages.data.pixels import pixel_tensor
from vqgen.stages.training.tasks import PriorTask

META = {"vocab_size": 8, "grid_height": 2, "grid_width": 3, "num_classes": 2, "tokenizer_fingerprint": "x"}


def write_views(folder, n: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    identity, flipped = (
        torch.randint(0, 8, (n, 2, 3), generator=g),
        torch.randint(0, 8, (n, 2, 3), generator=g),
    )
    labels = torch.arange(n) % 2
    train = (torch.cat([identity, flipped]), labels.repeat(2), torch.arange(2).repeat_interleave(n))
    val = (identity[:2], labels[:2], torch.zeros(2, dtype=torch.long))
    write_codes(folder, {"train": train, "validation": val}, {**META, "views": ["identity", "hflip"]})
    return identity, flipped


def test_views_round_trip_through_the_codes_format(tmp_path):
    identity, flipped = write_views(tmp_path)
    codes = load_codes(tmp_path)
    assert torch.equal(codes.train_codes, identity) and codes.train_views.shape == (2, 5, 2, 3)
    assert torch.equal(codes.train_views[1], flipped) and torch.equal(codes.train_labels, torch.arange(5) % 2)
    assert codes.val_codes.shape == (2, 2, 3)
    write_codes(tmp_path / "plain", {"train": (identity, torch.zeros(5)), "validation": (identity, torch.zeros(5))},
                META)  # fmt: skip
    assert load_codes(tmp_path / "plain").train_views is None  # codes written without views read as before


def test_prior_task_draws_one_view_per_image_exactly_again(tmp_path):
    identity, flipped = write_views(tmp_path)
    prior = GRUPrior(GRUPriorConfig(vocab_size=8, grid_height=2, grid_width=3, num_classes=2))
    task = PriorTask(prior, load_codes(tmp_path))
    seen = []
    for micro in range(6):
        batch = task.augment(task.get_batch(torch.arange(5), torch.device("cpu")), seed=3, micro_batch=micro)
        codes, labels = batch
        assert codes.shape == (5, 2, 3) and torch.equal(labels, torch.arange(5) % 2)
        from_flip = (codes == flipped).flatten(1).all(1)
        assert torch.all(
            from_flip | (codes == identity).flatten(1).all(1)
        )  # each row is one view of its image
        seen.append(from_flip)
        again = task.augment(task.get_batch(torch.arange(5), torch.device("cpu")), seed=3, micro_batch=micro)
        assert torch.equal(again[0], codes)  # a function of (seed, micro-batch): a resumed run draws the same
    drawn = torch.stack(seen)
    assert drawn.any() and not drawn.all()  # both views are drawn


def test_views_the_tokenizer_cannot_encode_are_refused():
    assert check_views(["hflip"]) == ["identity", "hflip"] and check_views([]) == ["identity"]
    images = torch.arange(8.0).view(1, 1, 2, 4)
    assert torch.equal(VIEWS["hflip"](images)[0, 0, 0], torch.tensor([3.0, 2.0, 1.0, 0.0]))
    with pytest.raises(UserError, match="--code-views crop: not a view the tokenizer can encode"):
        check_views(["hflip", "crop"])


def test_tokenize_stores_flip_views_and_train_prior_trains_on_them(tmp_path, image_folder):
    run = tmp_path / "run"
    result = run_cli("tokenize", "--run", str(run), "--dataset", str(image_folder), *TINY_TOKENIZER_FLAGS,
                     "--steps", "2", "--code-views", "hflip")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    codes, splits = load_codes(run / "codes"), load_image_splits(DataConfig(str(image_folder)))
    assert codes.meta["views"] == ["identity", "hflip"] and codes.train_views.shape[:2] == (
        2,
        len(splits.train),
    )
    tokenizer = load_tokenizer(run / "tokenizer")
    first = to_float(pixel_tensor(splits.train.select([0])))
    with torch.no_grad():  # row 0 of view 1: the first training image, mirrored, then encoded
        assert torch.equal(codes.train_views[1, 0], tokenizer.encode(first.flip(-1))[0].long())
    prior = run_cli("train-prior", "--prior", "gru", "--codes", str(run / "codes"), "--steps", "2", "--batch-size",
                    "8", "--sample-every", "0", "--prior-opt", "hidden_size=16", "--prior-opt", "embed_dim=16")  # fmt: skip
    assert prior.returncode == 0, prior.stderr[-3000:]


def test_tokenize_refuses_a_view_it_cannot_encode(tmp_path, image_folder):
    result = run_cli("tokenize", "--run", str(tmp_path / "run"), "--dataset", str(image_folder),
                     *TINY_TOKENIZER_FLAGS, "--code-views", "hflip,crop")  # fmt: skip
    assert_user_error(result, "--code-views crop")
    assert not (tmp_path / "run").exists()
