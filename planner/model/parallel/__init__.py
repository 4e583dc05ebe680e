"""Parallel runtime of the reference model, beside it (the model file knows nothing of it).

- :mod:`.groups`: torch.distributed groups (tp, dp, ep, edp, pp, embedding) from the
  planner's placement;
- :mod:`.pipeline`: pipeline stages and the 1F1B schedule over point-to-point messages;
- :mod:`.tensor`: tensor parallelism (MHA/GQA, MLA, dense FFN, shared experts) by
  transforming a built model;
- :mod:`.expert`: expert parallelism with all-to-all dispatch and combine;
- :mod:`.data`: data-parallel gradient averaging and ZeRO-1 Adam;
- :mod:`.runner`: :func:`train`, one process per rank, checked against
  :func:`reference_train`.

Context parallelism, sequence parallelism, expert tp and ZeRO-2/3 are not implemented.
"""

from planner.model.parallel.runner import (
    RankTrainer,
    RunResult,
    RuntimeUnsupportedError,
    TrainConfig,
    check_supported,
    reference_train,
    train,
)

__all__ = [
    "RankTrainer",
    "RunResult",
    "RuntimeUnsupportedError",
    "TrainConfig",
    "check_supported",
    "reference_train",
    "train",
]
