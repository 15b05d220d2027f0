"""evaluation/sample_checks.py: near-blank samples and copies of training images, on constructed images whose answer
is known."""

import pytest
import torch
from vqgen.stages.evaluation.sample_checks import (
    blank_threshold,
    check_samples,
    compact,
    near_blank_share,
    nearest_train_distance,
    pixel_spread,
    sample_reference,
)


def shapes(n: int, seed: int) -> torch.Tensor:
    """(n, 3, 16, 16) images in [-1, 1]: a coloured square of random size and place on a white background."""
    g = torch.Generator().manual_seed(seed)
    images = torch.ones(n, 3, 16, 16)
    for k in range(n):
        size = int(torch.randint(5, 11, (1,), generator=g))
        top, left = (int(v) for v in torch.randint(0, 16 - size, (2,), generator=g))
        images[k, :, top : top + size, left : left + size] = torch.rand(3, 1, 1, generator=g) * 2 - 1
    return images


def test_pixel_spread_by_hand_and_a_blank_image_counts():
    half = -torch.ones(1, 1, 4, 4)
    half[..., 2:] = (
        1  # half black, half white: standard deviation 0.5 (unbiased: over 16 pixels, * sqrt(16/15))
    )
    assert pixel_spread(half).item() == pytest.approx(0.5 * (16 / 15) ** 0.5)
    real = shapes(40, 0)
    threshold = blank_threshold(real)
    assert near_blank_share(real, threshold) == 0
    yellow = torch.tensor([1.0, 1.0, -1.0]).view(1, 3, 1, 1).expand(1, 3, 16, 16)  # one colour: spread 0
    faint = torch.ones(1, 3, 16, 16)
    faint[..., 6:9, 6:9] = 0.9  # a faint speck on white
    assert near_blank_share(torch.cat([real[:2], yellow, faint]), threshold) == 0.5


def test_a_copied_training_image_is_found_and_a_new_one_is_not():
    train, heldout = shapes(50, 1), shapes(30, 2)
    distance, index = nearest_train_distance(compact(train[[7, 3]]), compact(train), chunk=16)
    assert distance.tolist() == [0, 0] and index.tolist() == [7, 3]  # across chunks of 16
    new = shapes(4, 3)
    assert (nearest_train_distance(compact(new), compact(train))[0] > 0).all()
    ref = sample_reference(train, heldout)
    samples = torch.cat(
        [train[12:13], train[40:41] * 0.999, new]
    )  # two copies (one a hair off), four new images
    r = check_samples(pixel_spread(samples), compact(samples), ref)
    assert r["copy_share"] == pytest.approx(2 / 6) and r["nearest_train_rms_min"] < 1e-6
    assert ref.summary["eval_nearest_train_rms_median"] > ref.copy_threshold > 0.001
