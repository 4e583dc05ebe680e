"""Parallel runtime of the reference model, beside it (the model file knows nothing of it).

- :mod:`.groups`: torch.distributed groups (tp, dp, ep, edp) from the planner's placement;
- :mod:`.tensor`: tensor parallelism by transforming a built model;
- :mod:`.expert`: expert parallelism with all-to-all dispatch and combine;
- :mod:`.data`: data-parallel gradient averaging and ZeRO-1 Adam;
- :mod:`.runner`: :func:`train`, one process per rank, checked against
  :func:`reference_train`.

Pipeline and context parallelism are not implemented yet.
"""

from planner.model.parallel.runner import RunResult, TrainConfig, check_supported, reference_train, train

__all__ = ["RunResult", "TrainConfig", "check_supported", "reference_train", "train"]
