"""Training cost of a token budget, and the workload a token budget implies.

Two pure pieces, both exposed as :mod:`planner` API:

- :func:`training_cost`: from a step time, the tokens per step and the GPU count, the
  steps, wall-clock time, GPU-hours and money to train a token budget at a $/GPU-hour
  price. Defaults: one trillion tokens (costs "per trillion tokens", as DeepSeek-V3 states
  them) at $2 per GPU-hour, the rental price DeepSeek-V3 assumes (arXiv 2412.19437 §1 and
  Table 1: 2,788K H800 GPU-hours = $5.576M). Sanity check (seeds-digest §2.8-2.9): the
  measured step of 19.926 s on 2048 H800 with 15,360 x 4096 tokens per step gives
  2048 x 19.926 / 62,914,560 x 1e12 / 3600 = 180.2K GPU-hours per trillion tokens,
  DeepSeek-V3's "180K H800 GPU hours" per trillion tokens.
  The cost is steady-state: every step as long as the predicted one, 100% goodput (no
  batch-size ramp, restarts, checkpoints or evaluation).

- :func:`budget_workload`: DeepSeek LLM's fitted hyper-parameter laws (arXiv 2401.02954 §3.1,
  eq. (1); seeds-digest §3.3)::

      B_opt = 0.2920 * C^0.3271   tokens per step
      eta_opt = 0.3118 * C^-0.1250 peak learning rate
      C = M * D                   M = non-embedding FLOPs per token (§3.2), D = tokens

  B_opt is in tokens (seeds-digest §3.3 checks this against the 7B and 67B runs), so the
  batch in sequences is B_opt / seq_length, then rounded (:data:`ROUNDING_RULE`) to the
  nearest positive multiple of the GPU count: every data-parallel degree divides the GPU
  count (world = tp * cp * pp * dp), so every candidate plan's dp divides the batch and the
  search is not narrowed by the rounding. The rounded batch and its deviation from B_opt are
  reported.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from planner.errors import SpecError

DEFAULT_TOKENS = 1e12
"""Token budget when none is given: costs are stated per trillion tokens."""
DEFAULT_PRICE_PER_GPU_HOUR = 2.0
"""US dollars per GPU-hour: DeepSeek-V3 (arXiv 2412.19437) §1 and Table 1 assume a rental
price of $2 per H800 GPU-hour."""
SECONDS_PER_HOUR = 3600.0
SECONDS_PER_DAY = 86400.0

# DeepSeek LLM (arXiv 2401.02954) eq. (1), fitted on budgets 1e17..2e19 FLOPs.
BATCH_COEFF = 0.2920
BATCH_EXP = 0.3271
LR_COEFF = 0.3118
LR_EXP = -0.1250
ROUNDING_RULE = ("nearest positive multiple of the GPU count (every dp divides the GPU count, "
                 "so every candidate plan's dp divides the batch)")


@dataclass(frozen=True)
class TrainingCost:
    """What training ``tokens`` costs at one step time (steady state, 100% goodput)."""

    tokens: float
    step_time_s: float
    tokens_per_step: int
    num_gpus: int
    price_per_gpu_hour: float
    """US dollars per GPU-hour."""

    @property
    def steps(self) -> float:
        """Optimizer steps to see ``tokens`` (fractional: the budget need not be whole steps)."""
        return self.tokens / self.tokens_per_step

    @property
    def wall_time_s(self) -> float:
        return self.steps * self.step_time_s

    @property
    def wall_time_days(self) -> float:
        return self.wall_time_s / SECONDS_PER_DAY

    @property
    def gpu_hours(self) -> float:
        return self.num_gpus * self.wall_time_s / SECONDS_PER_HOUR

    @property
    def cost_usd(self) -> float:
        return self.gpu_hours * self.price_per_gpu_hour

    @property
    def gpu_hours_per_1e12_tokens(self) -> float:
        return self.gpu_hours * 1e12 / self.tokens

    @property
    def tokens_per_day(self) -> float:
        return self.tokens_per_step / self.step_time_s * SECONDS_PER_DAY

    def to_json(self) -> dict:
        data = asdict(self)
        for name in ("steps", "wall_time_s", "wall_time_days", "gpu_hours", "cost_usd",
                     "gpu_hours_per_1e12_tokens", "tokens_per_day"):
            data[name] = getattr(self, name)
        return data

    def line(self) -> str:
        """One sentence for people."""
        return (f"{_tokens(self.tokens)} tokens: {self.steps:,.0f} steps, {self.wall_time_days:,.1f} days on "
                f"{self.num_gpus:,} GPUs, {self.gpu_hours / 1e3:,.1f}K GPU-hours "
                f"({self.gpu_hours_per_1e12_tokens / 1e3:,.1f}K per trillion tokens), "
                f"${self.cost_usd / 1e6:,.3f}M at ${self.price_per_gpu_hour:g}/GPU-hour")


def training_cost(
    step_time_s: float, tokens_per_step: int, num_gpus: int, tokens: float | None = None,
    price_per_gpu_hour: float | None = None,
) -> TrainingCost:
    """Time, GPU-hours and money to train ``tokens`` (default 1e12) at ``price_per_gpu_hour``
    (default $2). Raises :class:`SpecError` for a non-positive input."""
    tokens = DEFAULT_TOKENS if tokens is None else tokens
    price = DEFAULT_PRICE_PER_GPU_HOUR if price_per_gpu_hour is None else price_per_gpu_hour
    check_budget(tokens, price)
    if not step_time_s > 0 or tokens_per_step < 1 or num_gpus < 1:
        raise SpecError("cost", (step_time_s, tokens_per_step, num_gpus),
                        "needs a positive step time, tokens per step and GPU count")
    return TrainingCost(tokens=float(tokens), step_time_s=float(step_time_s), tokens_per_step=int(tokens_per_step),
                        num_gpus=int(num_gpus), price_per_gpu_hour=float(price))


def check_budget(tokens: float | None, price_per_gpu_hour: float | None) -> None:
    """SpecError for a token budget or price that is not a positive finite number."""
    if tokens is not None and not (math.isfinite(tokens) and tokens > 0):
        raise SpecError("--tokens", tokens, "must be a positive number of tokens, e.g. 1e12")
    if price_per_gpu_hour is not None and not (math.isfinite(price_per_gpu_hour) and price_per_gpu_hour >= 0):
        raise SpecError("--price-per-gpu-hour", price_per_gpu_hour, "must be a non-negative number of US dollars")


@dataclass(frozen=True)
class BudgetWorkload:
    """Global batch and peak learning rate of a token budget (DeepSeek LLM eq. (1))."""

    tokens: float
    """D, the training tokens."""
    flops_per_token_nonembedding: float
    """M, DeepSeek LLM's non-embedding FLOPs per token (attention included)."""
    seq_length: int
    num_gpus: int
    global_batch_size: int
    """B_opt / seq_length rounded by :data:`ROUNDING_RULE`."""

    @property
    def compute_flops(self) -> float:
        """C = M * D."""
        return self.flops_per_token_nonembedding * self.tokens

    @property
    def batch_tokens_opt(self) -> float:
        return BATCH_COEFF * self.compute_flops ** BATCH_EXP

    @property
    def batch_sequences_opt(self) -> float:
        return self.batch_tokens_opt / self.seq_length

    @property
    def learning_rate_opt(self) -> float:
        return LR_COEFF * self.compute_flops ** LR_EXP

    @property
    def rounding_deviation(self) -> float:
        """Rounded batch / B_opt - 1."""
        return self.global_batch_size / self.batch_sequences_opt - 1.0

    def to_json(self) -> dict:
        data = asdict(self)
        for name in ("compute_flops", "batch_tokens_opt", "batch_sequences_opt", "learning_rate_opt",
                     "rounding_deviation"):
            data[name] = getattr(self, name)
        data["rounding_rule"] = ROUNDING_RULE
        data["source"] = "DeepSeek LLM (arXiv 2401.02954) eq. (1): B_opt = 0.2920 C^0.3271, eta_opt = 0.3118 C^-0.1250"
        return data

    def line(self) -> str:
        return (f"token budget {_tokens(self.tokens)}: C = M x D = {self.flops_per_token_nonembedding:.3g} x "
                f"{self.tokens:.3g} = {self.compute_flops:.3g} FLOPs; DeepSeek LLM's laws give B_opt = "
                f"{self.batch_tokens_opt:,.0f} tokens ({self.batch_sequences_opt:,.1f} sequences of "
                f"{self.seq_length}) and peak LR {self.learning_rate_opt:.3g}; global batch rounded to "
                f"{self.global_batch_size:,} sequences ({self.rounding_deviation:+.1%}), the {ROUNDING_RULE}")


def budget_workload(flops_per_token_nonembedding: float, tokens: float, seq_length: int,
                    num_gpus: int) -> BudgetWorkload:
    """The global batch (sequences) and peak LR for training ``tokens`` tokens (module docstring)."""
    check_budget(tokens, None)
    if seq_length < 1 or num_gpus < 1 or not flops_per_token_nonembedding > 0:
        raise SpecError("budget", (flops_per_token_nonembedding, seq_length, num_gpus),
                        "needs positive FLOPs per token, sequence length and GPU count")
    c = flops_per_token_nonembedding * tokens
    sequences = BATCH_COEFF * c ** BATCH_EXP / seq_length
    batch = max(1, round(sequences / num_gpus)) * num_gpus
    return BudgetWorkload(tokens=float(tokens), flops_per_token_nonembedding=float(flops_per_token_nonembedding),
                          seq_length=int(seq_length), num_gpus=int(num_gpus), global_batch_size=int(batch))


def _tokens(n: float) -> str:
    for scale, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M")):
        if n >= scale:
            return f"{n / scale:,.4g}{unit}"
    return f"{n:,.0f}"


__all__ = [
    "DEFAULT_PRICE_PER_GPU_HOUR", "DEFAULT_TOKENS", "ROUNDING_RULE", "BudgetWorkload", "TrainingCost",
    "budget_workload", "check_budget", "training_cost",
]
