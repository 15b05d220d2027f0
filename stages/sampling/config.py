"""The sampling knobs, declared once with their defaults (no torch here: the CLI reads the defaults cheaply)."""

from dataclasses import dataclass

from vqgen.stages.core.errors import UserError

DEFAULT_CFG_SCALE = 3.0  # classifier-free guidance of conditional priors, everywhere a default is needed


@dataclass
class SamplingConfig:
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    cfg_scale: float = DEFAULT_CFG_SCALE  # classifier-free guidance for conditional priors (1 = off)

    def validate(self) -> None:
        if not self.temperature > 0:
            raise UserError(f"--temperature must be > 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise UserError(f"--top-k must be at least 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise UserError(f"--top-p must lie in (0, 1], got {self.top_p}")

    def for_prior(self, prior) -> "SamplingConfig":
        """These settings, without guidance for an unconditional prior."""
        if prior.config.num_classes:
            return self
        return SamplingConfig(self.temperature, self.top_k, self.top_p, 1.0)
