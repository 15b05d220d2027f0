"""--streaming: local WebDataset shards and parquet files read as a stream, the held-out samples, the block
shuffle, and a resumed streamed run that sees exactly the samples an uninterrupted run sees after its checkpoint."""

import io
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image
from vqgen.stages.core.errors import UserError
from vqgen.stages.data.images import DataConfig
from vqgen.stages.data.pixels import pixel_tensor
from vqgen.stages.data.sources import load_image_splits


def png_bytes(rng) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def write_shards(folder, shards=2, per_shard=15, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    k = 0
    for s in range(shards):
        with tarfile.open(folder / f"shard-{s:02d}.tar", "w") as tar:
            for _ in range(per_shard):
                data = png_bytes(rng)
                info = tarfile.TarInfo(f"{k:05d}.png")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                k += 1
    return folder


def stream_cfg(path, **kw) -> DataConfig:
    base = dict(
        dataset=str(path), streaming=True, image_size=8, channels=3, heldout_size=6, shuffle_buffer=10
    )
    return DataConfig(**{**base, **kw})


def test_the_first_samples_are_held_out_and_training_reads_the_rest(tmp_path):
    splits = load_image_splits(stream_cfg(write_shards(tmp_path / "wds")))
    assert len(splits.heldout) == 6 and splits.class_names == []
    train = torch.cat([x for x, _ in splits.train.batches(4)])
    assert train.shape == (24, 3, 8, 8)  # 30 samples - 6 held out
    held = pixel_tensor(splits.heldout)
    assert not any(torch.equal(h, t) for h in held for t in train)


def test_parquet_files_stream_too(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(1)
    table = pa.table({"image": [{"bytes": png_bytes(rng), "path": None} for _ in range(12)]})
    (tmp_path / "pq").mkdir()
    pq.write_table(table, tmp_path / "pq" / "part-0.parquet")
    splits = load_image_splits(stream_cfg(tmp_path / "pq", heldout_size=2))
    assert len(splits.heldout) == 2 and sum(len(x) for x, _ in splits.train.batches(5)) == 10


def test_bad_streams_are_one_line(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "shard-0.tar").write_bytes(b"this is not a tar file" * 20)
    with pytest.raises(UserError, match="cannot (open it as a|read the) stream.*ReadError") as info:
        load_image_splits(stream_cfg(tmp_path / "bad"))
    assert "\n" not in str(info.value)
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "text").mkdir()
    pq.write_table(pa.table({"text": ["a", "b", "c"]}), tmp_path / "text" / "part-0.parquet")
    with pytest.raises(UserError, match="no image column"):
        load_image_splits(stream_cfg(tmp_path / "text"))
    (tmp_path / "none").mkdir()
    with pytest.raises(UserError, match=r"\.tar shards or \.parquet files"):
        load_image_splits(stream_cfg(tmp_path / "none"))


def make_trainer(splits, run_dir, steps=10):
    from vqgen.stages.tokenizer.base import QuantizerConfig
    from vqgen.stages.tokenizer.vqvae import VQVAE, VQVAEConfig
    from vqgen.stages.training.config import TrainConfig
    from vqgen.stages.training.tasks import StreamingTokenizerTask
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
    cfg = TrainConfig(
        steps=steps, batch_size=4, sample_every=0, checkpoint_every=3, record_data_order=True, warmup_steps=2
    )
    task = StreamingTokenizerTask(model, splits, DataConfig(random_flip=True))
    return Trainer(task, cfg, run_dir)


@pytest.mark.parametrize(
    "stop_at", [4, 7]
)  # resumed mid-block (from step 3) / at an epoch's end (from step 6)
def test_a_stopped_streamed_run_resumes_with_exactly_the_same_samples(tmp_path, stop_at):
    splits = load_image_splits(stream_cfg(write_shards(tmp_path / "wds")))  # 24 samples: blocks of 10, 10, 4
    whole = make_trainer(splits, tmp_path / "whole")
    whole.fit()  # 10 steps x 4 = 40 samples: the stream's second epoch too

    first = make_trainer(splits, tmp_path / "stopped")
    step = first.train_step

    def stop(s):
        if s == stop_at:
            raise KeyboardInterrupt  # as a kill after the checkpoint of step 3 or 6
        return step(s)

    first.train_step = stop
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    resumed = make_trainer(splits, tmp_path / "stopped")
    assert resumed.resume() == (stop_at - 1) // 3 * 3
    resumed.fit()

    order = lambda run: (run / "data_order.txt").read_text()  # noqa: E731
    assert order(tmp_path / "stopped") == order(tmp_path / "whole")  # every step's sample ids, in order
    assert resumed.data_digest == whole.data_digest
    a = whole.accelerator.unwrap_model(whole.model).state_dict()
    b = resumed.accelerator.unwrap_model(resumed.model).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    ids = [list(map(int, line.split("\t")[1].split(","))) for line in order(tmp_path / "whole").splitlines()]
    first_epoch = sorted(i for row in ids[:6] for i in row)
    assert first_epoch == list(range(24))  # one epoch: every sample once, shuffled


def test_a_streamed_run_is_evaluated_on_the_first_samples_of_its_stream(tmp_path):
    """evaluate reads a streamed run's real training images from the stream (its first ones, prepared once)."""
    from vqgen.stages.commands.evaluate import run_evaluate
    from vqgen.stages.commands.tokenize import TokenizeConfig, run_tokenize
    from vqgen.stages.data.streaming import reference_sample
    from vqgen.stages.evaluation.settings import EvaluateConfig
    from vqgen.stages.tokenizer.base import QuantizerConfig
    from vqgen.stages.tokenizer.vqvae import VQVAEConfig
    from vqgen.stages.training.config import TrainConfig

    shards = write_shards(tmp_path / "wds")
    splits = load_image_splits(stream_cfg(shards))
    reference = reference_sample(splits.train, 10)
    first = torch.cat([x for x, _ in splits.train.batches(4)])[:10]
    assert torch.equal(pixel_tensor(reference), first)

    model = VQVAEConfig(
        image_size=8,
        channels=3,
        base_channels=8,
        num_res_blocks=1,
        quantizer=QuantizerConfig(codebook_size=16, code_dim=4),
    )
    run = tmp_path / "run"
    train = TrainConfig(steps=2, batch_size=4, sample_every=0)
    run_tokenize(TokenizeConfig(run_dir=str(run), data=stream_cfg(shards), model=model, train=train))
    metrics = run_evaluate(EvaluateConfig(run_dir=str(run), n_samples=8, batch_size=4), log=lambda _: None)
    assert metrics["eval_images"] == 6 and 0 <= metrics["tokenizer"]["codebook_usage"] <= 1
