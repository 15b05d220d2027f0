"""Augmented code views (`vqgen encode --augment`: each training image's views in consecutive rows, with `image` and
`view` columns): `load_codes` groups them, `train-prior` draws one view per image and step, exactly again on resume."""

import pytest
import torch
from vqgen.priors.gru import GRUPrior, GRUPriorConfig
from vqgen.stages.artifacts.codes import assemble_codes, load_codes, write_shard
from vqgen.stages.core.errors import UserError
from vqgen.stages.training.tasks import PriorTask

META = {"vocab_size": 8, "grid_height": 2, "grid_width": 3, "num_classes": 2, "tokenizer_fingerprint": "x",
        "augment": "flip", "views": 2, "view_names": ["image", "flipped"]}  # fmt: skip


def write_views(folder, n: int = 5, views=None) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    identity, flipped = (
        torch.randint(0, 8, (n, 2, 3), generator=g),
        torch.randint(0, 8, (n, 2, 3), generator=g),
    )
    labels = torch.arange(n) % 2
    rows = torch.stack([identity, flipped], 1).flatten(0, 1)  # (2N, H, W): each image's two views in turn
    view = views if views is not None else torch.arange(2).repeat(n)
    write_shard(
        folder / "train.arrow", rows, labels.repeat_interleave(2), torch.arange(n).repeat_interleave(2), view
    )
    write_shard(folder / "val.arrow", identity[:2], labels[:2], torch.arange(2), torch.zeros(2))
    assemble_codes(
        folder / "codes", {"train": [folder / "train.arrow"], "validation": [folder / "val.arrow"]}, META
    )
    return identity, flipped


def test_views_are_grouped_by_image(tmp_path):
    identity, flipped = write_views(tmp_path)
    codes = load_codes(tmp_path / "codes")
    assert torch.equal(codes.train_codes, identity) and codes.train_views.shape == (2, 5, 2, 3)
    assert torch.equal(codes.train_views[1], flipped) and torch.equal(codes.train_labels, torch.arange(5) % 2)
    assert codes.val_codes.shape == (2, 2, 3)


def test_rows_that_are_not_views_of_each_image_in_turn_are_refused(tmp_path):
    write_views(tmp_path, views=torch.tensor([0, 1, 1, 0, 0, 1, 0, 1, 0, 1]))
    with pytest.raises(UserError, match="not 2 views of each image in turn"):
        load_codes(tmp_path / "codes")


def test_prior_task_draws_one_view_per_image_exactly_again(tmp_path):
    identity, flipped = write_views(tmp_path)
    prior = GRUPrior(GRUPriorConfig(vocab_size=8, grid_height=2, grid_width=3, num_classes=2))
    task = PriorTask(prior, load_codes(tmp_path / "codes"))
    assert task.num_examples() == 5  # an epoch is a pass over the images, not over their views
    seen = []
    for micro in range(6):
        codes, labels = task.augment(
            task.get_batch(torch.arange(5), torch.device("cpu")), seed=3, micro_batch=micro
        )
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
