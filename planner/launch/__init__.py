"""Launch a plan: run it on the reference runtime, or emit torchrun / Megatron-LM configs.

:mod:`planner.launch.emit` holds the pure functions behind ``planner launch --emit DIR``
(no torch needed); the ``planner launch`` command is :mod:`planner.cli.launch`.
"""

from planner.launch.emit import megatron_args, megatron_argv, run_config, torchrun_command, write_emit

__all__ = ["megatron_args", "megatron_argv", "run_config", "torchrun_command", "write_emit"]
