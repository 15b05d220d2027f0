"""The data order of a run: a pure function of (seed, step), so that a resumed run sees the very batches an
uninterrupted one would (each process takes its own slice of every global batch)."""

from pathlib import Path

import torch
from vqgen.stages.core.errors import UserError, first_line
from vqgen.stages.core.files import write_text


class EpochSampler:
    """Shuffled batches as a pure function of the global micro-batch index: epoch e is ordered by
    randperm(n) seeded with seed + e, and process r of w takes slice r of every w consecutive batches."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        self.n, self.bs, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.per_epoch = n // (batch_size * world)
        if self.per_epoch == 0:
            raise UserError(
                f"the dataset has {n} examples, fewer than one batch of {batch_size} x {world} processes; "
                "use a smaller --batch-size"
            )
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def indices(self, micro_batch: int) -> torch.Tensor:
        epoch, j = divmod(micro_batch, self.per_epoch)
        if epoch != self._epoch:
            self._epoch = epoch
            self._perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch))
        start = (j * self.world + self.rank) * self.bs
        return self._perm[start : start + self.bs]


class _FromStep(torch.utils.data.Sampler):
    """The EpochSampler's index lists from one micro-batch on, without end (the trainer stops asking)."""

    def __init__(self, sampler: EpochSampler, start: int):
        self.sampler, self.start = sampler, start

    def __iter__(self):
        micro = self.start
        while True:
            yield self.sampler.indices(micro).tolist()
            micro += 1


class _Rows(torch.utils.data.Dataset):
    def __init__(self, rows):
        self.rows = rows

    def __getitem__(self, indices: list[int]):
        return torch.as_tensor(indices, dtype=torch.long), self.rows(indices)


def worker_died(exc: BaseException, workers: bool) -> UserError | None:
    """The one line for a DataLoader worker that died (the out-of-memory killer, a kill): torch raises it as a
    RuntimeError from its SIGCHLD handler, wherever the main process is at that moment, or, killed while it sent a
    batch, the pipe to it breaks first (`workers`: the feed reads through worker processes)."""
    broken_pipe = workers and isinstance(exc, (ConnectionResetError, BrokenPipeError, EOFError))
    if not broken_pipe and (not isinstance(exc, RuntimeError) or "DataLoader worker" not in str(exc)):
        return None
    return UserError(
        f"a data-loading worker process died ({first_line(exc).strip()}), often the out-of-memory killer; the last "
        "checkpoint is kept: rerun with --resume and fewer --num-workers (0 reads in the main process)"
    )


class BatchFeed:
    """Micro-batches read ahead by DataLoader worker processes, in exactly the EpochSampler's order: the batch
    sampler yields `sampler.indices(m)` for m = the requested micro-batch onwards, so the data seen is the same
    function of (seed, step) as without workers. Asking for another micro-batch than the next one (a step tried
    again after a non-finite loss) restarts the reading there."""

    def __init__(self, sampler: EpochSampler, rows, num_workers: int, pin_memory: bool):
        self.sampler, self.rows, self.num_workers, self.pin_memory = sampler, rows, num_workers, pin_memory
        self._iter, self._next = None, None

    def get(self, micro_batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._iter is None or self._next != micro_batch:
            self.close()
            loader = torch.utils.data.DataLoader(
                _Rows(self.rows),
                batch_size=None,
                sampler=_FromStep(self.sampler, micro_batch),
                num_workers=self.num_workers,
                pin_memory=self.pin_memory,
            )
            self._iter = iter(loader)
        self._next = micro_batch + 1
        return next(self._iter)

    def close(self) -> None:
        if self._iter is not None:
            shutdown = getattr(self._iter, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
        self._iter = None


def data_order_path(run_dir: Path, rank: int) -> Path:
    """Where process `rank` logs the indices it consumed (--record-data-order)."""
    return run_dir / ("data_order.txt" if rank == 0 else f"data_order.rank{rank}.txt")


def open_data_order(run_dir: Path, rank: int, step: int):
    """The debug log of consumed indices: one line per optimizer step, `step<TAB>i,j,k,...` (all micro-batches
    of this process, in order). A resumed run (`step` > 0) first cuts it back to the steps before its checkpoint."""
    path = data_order_path(run_dir, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    if step == 0:
        return open(path, "w")
    kept = []
    if path.exists():
        for line in path.read_text().splitlines(keepends=True):
            head = line.split("\t", 1)[0]
            if line.endswith("\n") and head.isdigit() and int(head) < step:
                kept.append(line)
    write_text("".join(kept), path)  # the atomic writer: an unpredictable temporary name, renamed into place
    return open(path, "a")
