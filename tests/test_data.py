"""Data sources: the embedded digits, a local image folder (labels from subfolders, conversions, unreadable files),
and a Hub id without network."""

import time

import numpy as np
import pytest
from PIL import Image
from vqgen.stages.core.errors import UserError
from vqgen.stages.data.images import DataConfig, to_array
from vqgen.stages.data.sources import load_image_splits


def test_embedded_default_is_real_mnist_with_a_heldout_split():
    splits = load_image_splits(DataConfig())
    assert len(splits.train) == 4500 and len(splits.heldout) == 500 and splits.num_classes == 10
    batch = splits.heldout.with_format("numpy")[:]
    pixels, labels = batch["pixels"], batch["label"]
    assert pixels.shape == (500, 1, 28, 28)
    assert np.bincount(labels, minlength=10).tolist() == [50] * 10
    assert pixels.max() == 255 and pixels.min() == 0 and 0.05 < (pixels > 127).mean() < 0.3  # digits on black


def test_image_folder_labels_conversions_and_unreadable_files(tmp_path, digits):
    images, labels = digits
    for i in range(20):
        cls = tmp_path / f"class_{labels[i]}"
        cls.mkdir(exist_ok=True)
        img = Image.fromarray(images[i], mode="L")
        mode = ("L", "RGBA", "P", "RGB")[i % 4]
        img = img.convert(mode) if mode != "P" else img.convert("RGB").convert("P")
        img.save(cls / f"{i}.png")
    (tmp_path / f"class_{labels[0]}" / "broken.png").write_bytes(b"not an image")
    wide = Image.new("RGB", (40, 20), (255, 255, 255))
    wide.save(tmp_path / f"class_{labels[0]}" / "wide.jpg")
    splits = load_image_splits(
        DataConfig(dataset=str(tmp_path), image_size=16, channels=3, heldout_fraction=0.2)
    )
    assert splits.skipped == 1
    assert len(splits.train) + len(splits.heldout) == 21
    assert splits.class_names == sorted(splits.class_names) and splits.class_names[0].startswith("class_")
    px = splits.train.with_format("numpy")[:]["pixels"]
    assert px.shape[1:] == (3, 16, 16)


def test_to_array_fits_and_pads_non_square_images():
    arr = to_array(Image.new("L", (40, 20), 255), size=16, channels=1)
    assert arr.shape == (1, 16, 16)
    assert arr[0, 0].max() == 0 and arr[0, 8].min() == 255  # padded rows top and bottom, image in the middle


def test_folder_without_images_is_a_user_error(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UserError, match="no images"):
        load_image_splits(DataConfig(dataset=str(tmp_path)))


def test_folder_with_only_unreadable_images_is_a_user_error(tmp_path):
    (tmp_path / "a.png").write_bytes(b"garbage")
    with pytest.raises(UserError, match="could be read"):
        load_image_splits(DataConfig(dataset=str(tmp_path)))


def test_missing_path_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no such folder"):
        load_image_splits(DataConfig(dataset=str(tmp_path / "missing")))


def test_hub_id_without_network_fails_fast_in_one_line(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: the network is "off"
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    start = time.perf_counter()
    with pytest.raises(UserError, match="cannot reach the Hugging Face Hub") as info:
        load_image_splits(DataConfig(dataset="someone/some-dataset"))
    assert time.perf_counter() - start < 10 and "\n" not in str(info.value)
