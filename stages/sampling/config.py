"""The sampling settings a user gives (`generate`, `evaluate`, `push`, `Pipeline`): the prior contract's
SamplingOptions (vqgen.priors.base) with the prior's own defaults where a value is left out, checked once."""

import math
from dataclasses import dataclass, replace

from vqgen.priors.base import GUIDANCE_SCHEDULES, SamplingOptions
from vqgen.stages.core.errors import UserError

MAX_TEMPERATURE, MIN_TEMPERATURE = (
    100.0,
    1e-3,
)  # outside this, softmax over- or underflows into NaN or a one-hot
MAX_CFG_SCALE = 100.0  # |scale| above this makes cond - uncond overflow into non-finite logits


@dataclass
class SamplingConfig(SamplingOptions):
    """SamplingOptions whose temperature and guidance scale may be left to the prior (None); `for_prior` fills them
    in, and the result is what `Prior.sample` takes."""

    temperature: float | None = None  # None = the prior's own default (its config's sample_temperature)
    # None = the prior's own default (default_cfg_scale: its config's sample_cfg_scale when it can be guided, else 1)
    cfg_scale: float | None = None

    def validate(self) -> None:
        t = self.temperature
        if t is not None and not (math.isfinite(t) and MIN_TEMPERATURE <= t <= MAX_TEMPERATURE):
            raise UserError(f"--temperature must lie in [{MIN_TEMPERATURE:g}, {MAX_TEMPERATURE:g}], got {t}")
        if self.top_k is not None and self.top_k < 1:
            raise UserError(f"--top-k must be at least 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise UserError(f"--top-p must lie in (0, 1], got {self.top_p}")
        s = self.cfg_scale
        if s is not None and not (math.isfinite(s) and abs(s) <= MAX_CFG_SCALE):
            raise UserError(
                f"--cfg-scale must be a number in [-{MAX_CFG_SCALE:g}, {MAX_CFG_SCALE:g}], got {s}"
            )
        if self.cfg_schedule not in GUIDANCE_SCHEDULES:
            raise UserError(
                f"--cfg-schedule {self.cfg_schedule!r} does not exist; choose {', '.join(GUIDANCE_SCHEDULES)}"
            )
        if not (math.isfinite(self.cfg_power) and 0 < self.cfg_power <= 100):
            raise UserError(f"--cfg-power must lie in (0, 100], got {self.cfg_power}")
        lo, hi = self.cfg_interval
        if not 0.0 <= lo < hi <= 1.0:
            raise UserError(f"--cfg-interval LO HI must satisfy 0 <= LO < HI <= 1, got {lo} {hi}")

    def for_prior(self, prior) -> "SamplingConfig":
        """These settings with the prior's defaults filled in; guidance it cannot give is refused."""
        c = prior.config
        if self.temperature is None:
            return replace(self, temperature=c.sample_temperature).for_prior(prior)
        if self.cfg_scale is None:
            return replace(self, cfg_scale=default_cfg_scale(prior))
        if self.cfg_scale != 1.0 and not c.num_classes:
            raise UserError(
                "--cfg-scale: this prior is unconditional (trained without labels); leave guidance out"
            )
        if self.cfg_scale != 1.0 and not c.label_dropout > 0:
            raise UserError(
                "--cfg-scale: this prior was trained without label dropout (label_dropout 0), so it never learned "
                "the unconditional model that guidance needs; sample with --cfg-scale 1"
            )
        return self


def default_cfg_scale(prior) -> float:
    """The prior's own guidance scale (sample_cfg_scale) if it can be guided (class-conditional, trained with label
    dropout), else 1."""
    c = prior.config
    return c.sample_cfg_scale if c.num_classes and c.label_dropout > 0 else 1.0
