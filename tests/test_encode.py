"""`vqgen encode`: codes identical to the tokenizer's own, written shard by shard, resumable after a kill, the
augmented views stored with their view index, and a real two-process run."""

import subprocess
import sys

import pytest
import torch
from conftest import ROOT, assert_user_error, run_cli


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from vqgen.stages.artifacts.models import save_model
    from vqgen.stages.tokenizer.base import QuantizerConfig
    from vqgen.stages.tokenizer.vqvae import VQVAE, VQVAEConfig

    torch.manual_seed(0)
    run = tmp_path_factory.mktemp("enc") / "run"
    config = VQVAEConfig(
        base_channels=8,
        max_channels=16,
        num_res_blocks=1,
        latent_channels=8,
        quantizer=QuantizerConfig(codebook_size=16, code_dim=4),
    )
    save_model(VQVAE(config), run / "tokenizer")
    return run / "tokenizer"


def encode(tokenizer, folder, out, **changes):
    from vqgen.stages.commands.encode import EncodeConfig, run_encode
    from vqgen.stages.data.images import DataConfig

    cfg = EncodeConfig(str(tokenizer), str(out), DataConfig(dataset=str(folder)), batch_size=5, shard_size=8)
    for k, v in changes.items():
        setattr(cfg, k, v)
    return run_encode(cfg)


def kill_after_two_shards(monkeypatch) -> None:
    """encode's shard writer, patched to die (as under a kill) when it is about to write the third shard."""
    from vqgen.stages.artifacts import codes as codes_module
    from vqgen.stages.commands import encode as encode_module

    written = []

    def dies_after_two(path, *args):
        if len(written) == 2:
            raise KeyboardInterrupt
        codes_module.write_shard(path, *args)
        written.append(path)

    monkeypatch.setattr(encode_module, "write_shard", dies_after_two)


def rows(out, split):
    from datasets import load_from_disk

    return load_from_disk(str(out / split)).with_format("torch")[:]


def test_codes_are_the_tokenizers_own_and_flip_views_are_stored(tmp_path, tokenizer, image_folder):
    from vqgen.stages.artifacts.codes import load_codes
    from vqgen.stages.artifacts.models import load_tokenizer
    from vqgen.stages.data.images import DataConfig, to_float
    from vqgen.stages.data.pixels import label_array, pixel_tensor
    from vqgen.stages.data.sources import load_image_splits

    out = tmp_path / "run" / "codes"
    result = encode(tokenizer, image_folder, out, augment="flip")
    model = load_tokenizer(tokenizer)
    splits = load_image_splits(DataConfig(dataset=str(image_folder)))
    images = to_float(pixel_tensor(splits.train))
    train = rows(out, "train")
    n = len(images)
    assert result["rows"] == {"train": 2 * n, "validation": len(splits.heldout)}
    assert torch.equal(train["view"], torch.arange(2).repeat(n))
    assert torch.equal(train["image"], torch.arange(n).repeat_interleave(2))
    assert torch.equal(train["label"][::2], torch.as_tensor(label_array(splits.train)))
    assert torch.equal(train["codes"][::2].long(), model.encode(images))
    assert torch.equal(train["codes"][1::2].long(), model.encode(images.flip(-1)))
    codes = load_codes(out)  # what train-prior reads
    assert codes.meta["views"] == 2 and codes.meta["augment"] == "flip"
    assert codes.meta["tokenizer"] == "../tokenizer" and codes.val_codes.shape[1:] == (7, 7)
    assert not (tmp_path / "run" / ".codes.encoding").exists()


def test_a_killed_encode_resumes_from_its_shards(tmp_path, tokenizer, image_folder, monkeypatch):
    from vqgen.stages.core.errors import UserError

    whole = tmp_path / "whole"
    encode(tokenizer, image_folder, whole)
    kill_after_two_shards(monkeypatch)
    out = tmp_path / "codes"
    with pytest.raises(KeyboardInterrupt):
        encode(tokenizer, image_folder, out)
    monkeypatch.undo()
    assert not out.exists() and len(list((tmp_path / ".codes.encoding" / "train").glob("*.arrow"))) == 2
    with pytest.raises(UserError, match="pass --resume to continue it"):
        encode(tokenizer, image_folder, out)
    with pytest.raises(UserError, match="shard_size differs"):
        encode(tokenizer, image_folder, out, resume=True, shard_size=4)
    result = encode(tokenizer, image_folder, out, resume=True)
    assert result["skipped_shards"] == 2
    for split in ("train", "validation"):
        assert all(torch.equal(a, b) for a, b in zip(rows(out, split).values(), rows(whole, split).values()))
    with pytest.raises(UserError, match="already exists"):
        encode(tokenizer, image_folder, out)


def test_ten_crop_stores_ten_views(tmp_path, tokenizer, image_folder):
    from vqgen.stages.artifacts.models import load_tokenizer
    from vqgen.stages.data.images import DataConfig, to_float
    from vqgen.stages.data.pixels import pixel_tensor
    from vqgen.stages.data.sources import load_image_splits
    from vqgen.stages.data.views import five_crop

    out = tmp_path / "codes"
    encode(tokenizer, image_folder, out, augment="ten-crop")
    train, val = rows(out, "train"), rows(out, "validation")
    assert torch.equal(train["view"][:20], torch.arange(10).repeat(2)) and set(val["view"].tolist()) == {4}
    big = to_float(
        pixel_tensor(load_image_splits(DataConfig(dataset=str(image_folder), image_size=30)).train)
    )
    model = load_tokenizer(tokenizer)
    corner = five_crop(big[:3].flip(-1), 28)[1]  # view 6: the flipped image's top-right corner
    assert torch.equal(train["codes"][6:30:10].long(), model.encode(corner))


def test_encode_refusals(tmp_path, tokenizer, image_folder):
    from vqgen.stages.core.errors import UserError

    with pytest.raises(UserError, match="no such folder"):
        encode(tmp_path / "none", image_folder, tmp_path / "codes")
    with pytest.raises(UserError, match="--augment must be one of none, flip, ten-crop"):
        encode(tokenizer, image_folder, tmp_path / "codes", augment="rotate")
    (tmp_path / "codes").mkdir()
    (tmp_path / "codes" / "x").write_text("keep")
    result = run_cli(
        "encode",
        "--tokenizer",
        str(tokenizer),
        "--dataset",
        str(image_folder),
        "--out",
        str(tmp_path / "codes"),
    )
    assert_user_error(result, "already exists", "--overwrite")
    assert (tmp_path / "codes" / "x").read_text() == "keep"


@pytest.mark.slow
def test_two_processes_each_encode_their_part(tmp_path, tokenizer, image_folder):
    out = tmp_path / "codes"
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", str(ROOT / "cli.py"), "encode",
        "--tokenizer", str(tokenizer), "--dataset", str(image_folder), "--out", str(out), "--shard-size", "8",
    ]  # fmt: skip
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    one = tmp_path / "one"
    encode(tokenizer, image_folder, one)
    for split in ("train", "validation"):
        assert all(torch.equal(a, b) for a, b in zip(rows(out, split).values(), rows(one, split).values()))


def test_a_stream_is_encoded_in_stream_order_and_resumes(tmp_path, monkeypatch):
    from test_streaming import stream_cfg, write_shards
    from vqgen.stages.artifacts.models import save_model
    from vqgen.stages.commands.encode import EncodeConfig, run_encode
    from vqgen.stages.data.images import to_float
    from vqgen.stages.data.sources import load_image_splits
    from vqgen.stages.tokenizer.base import QuantizerConfig
    from vqgen.stages.tokenizer.vqvae import VQVAE, VQVAEConfig

    torch.manual_seed(0)
    config = VQVAEConfig(
        image_size=8,
        channels=3,
        downsample=2,
        base_channels=8,
        max_channels=8,
        num_res_blocks=1,
        latent_channels=4,
        quantizer=QuantizerConfig(codebook_size=16, code_dim=4),
    )
    model = VQVAE(config).eval()
    save_model(model, tmp_path / "run" / "tokenizer")
    data = stream_cfg(write_shards(tmp_path / "wds"))

    def encode_stream(out, **changes):
        cfg = EncodeConfig(
            str(tmp_path / "run" / "tokenizer"), str(out), data, batch_size=3, shard_size=5, augment="none"
        )
        for k, v in changes.items():
            setattr(cfg, k, v)
        return run_encode(cfg)

    kill_after_two_shards(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        encode_stream(tmp_path / "run" / "codes")
    monkeypatch.undo()
    result = encode_stream(tmp_path / "run" / "codes", resume=True)
    assert result["skipped_shards"] == 2 and result["rows"] == {"train": 24, "validation": 6}
    train = rows(tmp_path / "run" / "codes", "train")
    images = to_float(torch.cat([x for x, _ in load_image_splits(data).train.batches(24)]))
    assert torch.equal(train["codes"].long(), model.encode(images))
    assert torch.equal(train["image"], torch.arange(24))


def test_tokenize_augment_stores_the_views_as_encode_does(tmp_path, tokenizer, image_folder):
    from vqgen.stages.artifacts.codes import load_codes
    from vqgen.stages.commands.tokenize import TokenizeConfig, run_tokenize
    from vqgen.stages.data.images import DataConfig

    data = DataConfig(dataset=str(image_folder))
    cfg = TokenizeConfig(str(tmp_path / "run"), data, tokenizer=str(tokenizer), augment="flip")
    run_tokenize(cfg)
    encode(tokenizer, image_folder, tmp_path / "encoded", augment="flip")
    for split in ("train", "validation"):  # the same rows, columns and order as `vqgen encode --augment flip`
        mine, theirs = rows(tmp_path / "run" / "codes", split), rows(tmp_path / "encoded", split)
        assert mine.keys() == theirs.keys() == {"codes", "label", "image", "view"}
        assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    codes = load_codes(tmp_path / "run" / "codes")  # what train-prior draws from: two views of every image
    assert codes.train_views.shape == (2, len(codes.train_labels), 7, 7) and codes.meta["augment"] == "flip"
    held_out = rows(tmp_path / "run" / "codes", "validation")  # one grid per held-out image
    assert len(held_out["view"].unique()) == 1 and len(held_out["image"]) == len(codes.val_codes)


def test_tokenize_refuses_a_ten_crop_its_images_cannot_give(tmp_path, image_folder):
    from conftest import TINY_TOKENIZER_FLAGS

    run = tmp_path / "run"
    result = run_cli(
        "tokenize",
        "--run",
        str(run),
        "--dataset",
        str(image_folder),
        "--image-size",
        "8",
        "--augment",
        "ten-crop",
        *TINY_TOKENIZER_FLAGS,
    )
    assert_user_error(result, "--augment ten-crop", "at least 10 px")
    assert not run.exists()  # refused before anything was read or trained


def test_augment_auto_flips_rgb_and_leaves_grey_images_alone(tmp_path, tokenizer, image_folder):
    """The default, --augment auto: flip for RGB images, none for grey ones (a digit's mirror image is no digit);
    what it resolved to is what codes.json records."""
    from vqgen.stages.artifacts.codes import load_codes
    from vqgen.stages.data.views import resolve_augment

    assert [resolve_augment("auto", c) for c in (1, 3)] == ["none", "flip"]
    assert [resolve_augment(a, 3) for a in ("none", "flip", "ten-crop")] == ["none", "flip", "ten-crop"]
    result = encode(tokenizer, image_folder, tmp_path / "codes")  # a grey tokenizer, the default augment
    codes = load_codes(tmp_path / "codes")
    assert codes.meta["augment"] == "none" and codes.meta["views"] == 1
    assert result["rows"]["train"] == len(codes.train_codes)
