"""The data order of a run: a pure function of (seed, step), so that a resumed run sees the very batches an
uninterrupted one would (each process takes its own slice of every global batch)."""

import torch
from vqgen.stages.core.errors import UserError


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
