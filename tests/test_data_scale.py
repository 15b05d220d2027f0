"""Data at any scale: folders prepared once through `datasets`' imagefolder into a cache that later runs reuse,
split folders and metadata.jsonl, --resize, seeded augmentation, batch-wise reading, and DataLoader workers that
give the very batches of the in-line reading."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from vqgen.stages.data.images import DataConfig, fit_array
from vqgen.stages.data.pixels import augment, iter_pixel_batches, pixel_tensor
from vqgen.stages.data.sources import load_image_splits


@pytest.fixture(autouse=True)
def own_datasets_cache(tmp_path, monkeypatch):
    """Each test prepares into its own cache (datasets.config.HF_DATASETS_CACHE)."""
    monkeypatch.setattr("datasets.config.HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))


def write_images(folder, n, size=(12, 10), seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")


def test_a_folder_is_prepared_once_and_reused_until_the_data_or_settings_change(tmp_path, capsys):
    for name in ("cat", "dog"):
        write_images(tmp_path / "data" / name, 6, seed=len(name) + ord(name[0]))
    cfg = DataConfig(dataset=str(tmp_path / "data"), image_size=8, channels=3)
    first = load_image_splits(cfg)
    assert "data: prepared 10 + 2 images" in capsys.readouterr().err
    assert first.class_names == ["cat", "dog"] and len(first.train) == 10 and len(first.heldout) == 2

    again = load_image_splits(cfg)
    err = capsys.readouterr().err
    assert err.count("data: reusing the prepared cache") == 1 and "prepared 10" not in err
    assert torch.equal(pixel_tensor(again.train), pixel_tensor(first.train))
    assert again.class_names == first.class_names

    load_image_splits(DataConfig(dataset=str(tmp_path / "data"), image_size=8, channels=3, resize="pad"))
    assert "data: prepared" in capsys.readouterr().err  # another preparation setting: prepared anew
    write_images(tmp_path / "data" / "cat", 7, seed=99)  # one more file (and the others rewritten)
    assert len(load_image_splits(cfg).train) + 2 == 13 and "data: prepared" in capsys.readouterr().err


def test_split_folders_and_metadata_labels_are_honoured(tmp_path):
    root = tmp_path / "data"
    for split, n in (("train", 8), ("test", 3)):
        write_images(root / split, n, seed=n)
        rows = [{"file_name": f"{i:03d}.png", "kind": "odd" if i % 2 else "even"} for i in range(n)]
        (root / split / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    splits = load_image_splits(DataConfig(dataset=str(root), image_size=8, channels=3, label_column="kind"))
    assert len(splits.train) == 8 and len(splits.heldout) == 3  # test/ is the held-out split
    assert splits.class_names == ["even", "odd"]
    labels = splits.heldout.with_format("numpy")[:]["label"].tolist()
    assert labels == [0, 1, 0]


def test_center_crop_fills_the_square_and_pad_letterboxes():
    wide = Image.new("RGB", (40, 20), (0, 0, 0))
    wide.paste((255, 255, 255), (10, 0, 30, 20))  # a white centre square between black side bands
    crop, pad = fit_array(wide, 8, 3, "center-crop"), fit_array(wide, 8, 3, "pad")
    assert crop.shape == pad.shape == (3, 8, 8)
    assert crop.min() == 255  # only the centre square is kept
    assert pad[:, 0].max() == 0 and pad[:, 4].max() == 255  # padded rows above the image
    assert DataConfig(channels=3, dataset="x").resize_mode() == "center-crop"
    assert DataConfig().resize_mode() == DataConfig(dataset="x", channels=1).resize_mode() == "pad"


def test_batches_are_read_without_holding_the_split(tmp_path):
    write_images(tmp_path / "data", 30)
    splits = load_image_splits(DataConfig(dataset=str(tmp_path / "data"), image_size=8, channels=3))
    whole = pixel_tensor(splits.train)
    for ds in (
        splits.train,
        splits.train.select(range(len(splits.train))),
    ):  # plain files, and an index mapping
        assert torch.equal(torch.cat(list(iter_pixel_batches(ds, 4))), whole)
        parts = list(iter_pixel_batches(ds, 5, 3, 17))
        assert [p.shape[0] for p in parts] == [5, 5, 4] and torch.equal(torch.cat(parts), whole[3:17])


def test_augmentation_is_a_function_of_the_generator_seed():
    x = torch.rand(6, 3, 16, 16) * 2 - 1
    draw = lambda seed: augment(x, True, True, torch.Generator().manual_seed(seed))  # noqa: E731
    assert torch.equal(draw(1), draw(1)) and not torch.equal(draw(1), draw(2))
    assert draw(1).shape == x.shape
    assert torch.equal(augment(x, False, False, torch.Generator()), x)


def train_once(splits, workers: int, run_dir):
    from vqgen.stages.tokenizer.base import QuantizerConfig
    from vqgen.stages.tokenizer.vqvae import VQVAE, VQVAEConfig
    from vqgen.stages.training.config import TrainConfig
    from vqgen.stages.training.tasks import TokenizerTask
    from vqgen.stages.training.trainer import Trainer

    torch.manual_seed(0)
    model = VQVAE(
        VQVAEConfig(
            image_size=8,
            channels=3,
            base_channels=8,
            num_res_blocks=1,
            quantizer=QuantizerConfig(codebook_size=16, code_dim=4),
        )
    )
    data = DataConfig(random_flip=True, random_crop=True)
    cfg = TrainConfig(steps=5, batch_size=4, sample_every=0, checkpoint_every=100, num_workers=workers)
    trainer = Trainer(TokenizerTask(model, splits, in_memory_bytes=0, data=data), cfg, run_dir)
    seen = []
    original = trainer._micro_batch
    trainer._micro_batch = lambda m: seen.append(original(m)) or seen[-1]
    trainer.fit()
    return seen, trainer.data_digest, trainer.accelerator.unwrap_model(trainer.model).state_dict()


def test_workers_give_the_same_batches_as_reading_in_line(tmp_path):
    write_images(tmp_path / "data", 24)
    splits = load_image_splits(DataConfig(dataset=str(tmp_path / "data"), image_size=8, channels=3))
    inline, digest0, weights0 = train_once(splits, 0, tmp_path / "w0")
    workers, digest2, weights2 = train_once(splits, 2, tmp_path / "w2")
    assert len(inline) == len(workers) == 5
    for (i0, b0), (i2, b2) in zip(inline, workers):
        assert torch.equal(i0, i2) and torch.equal(b0, b2)
    assert digest0 == digest2 and all(torch.equal(weights0[k], weights2[k]) for k in weights0)


PROXY = "http://127.0.0.1:9"  # loopback, nothing listens there
PROXY_ENV = {
    "HTTPS_PROXY": PROXY, "HTTP_PROXY": PROXY, "https_proxy": PROXY, "http_proxy": PROXY,
    "NO_PROXY": "", "no_proxy": "", "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "https://huggingface.co",
}  # fmt: skip


@pytest.mark.parametrize(
    "args",
    [
        ["tokenize", "--run", "{tmp}/run", "--dataset", "someone/some-dataset"],
        ["generate", "--from", "someone/some-model", "--out", "{tmp}/x.png"],
    ],
    ids=["dataset", "model"],
)
def test_hub_behind_an_unreachable_proxy_is_one_line(tmp_path, args):
    """The Hub is reached through huggingface_hub's own HTTP session, which honours HTTPS_PROXY: with the proxy a
    closed loopback port, a Hub id is one `error:` line and exit code 2 (timed below, in-process)."""
    from conftest import assert_user_error, run_cli

    env = {**PROXY_ENV, "HF_HOME": str(tmp_path / "hf-home")}
    result = run_cli(*[a.replace("{tmp}", str(tmp_path)) for a in args], env=env)
    assert_user_error(result, "cannot reach the Hugging Face Hub", "proxy 127.0.0.1:9")


def test_unreachable_proxy_is_answered_within_seconds(tmp_path, monkeypatch):
    """In-process, where no interpreter start-up hides it: the answer comes in under 10 s (datasets alone would
    retry for about half a minute)."""
    import time

    from huggingface_hub.utils import close_session
    from vqgen.stages.core.errors import UserError

    for name, value in PROXY_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    close_session()  # the next session is made with the proxy settings above
    try:
        started = time.perf_counter()
        with pytest.raises(UserError, match="cannot reach the Hugging Face Hub") as info:
            load_image_splits(DataConfig(dataset="someone/some-dataset"))
        assert time.perf_counter() - started < 10 and "\n" not in str(info.value)
        assert "proxy 127.0.0.1:9" in str(info.value)
    finally:
        monkeypatch.undo()
        close_session()


def test_pixel_split_reads_rows_like_the_tensor(tmp_path):
    from vqgen.stages.data.pixels import PixelSplit

    write_images(tmp_path / "data", 20)
    splits = load_image_splits(DataConfig(dataset=str(tmp_path / "data"), image_size=8, channels=3))
    whole = pixel_tensor(splits.train)
    lazy = PixelSplit(splits.train)
    assert lazy.shape == whole.shape and len(lazy) == len(whole)
    mask = torch.arange(len(whole)) % 3 == 0
    for key in (slice(2, 9), slice(0, 10, 3), torch.tensor([5, 0, 7]), [1, 2], mask, slice(4, 4)):
        assert torch.equal(lazy[key], whole[key]), key
    assert torch.equal(torch.cat(list(lazy.batches(7))), whole)
