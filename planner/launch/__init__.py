"""Launch a plan: run it on the reference runtime, or emit torchrun / Megatron-LM configs.

:mod:`planner.launch.emit` holds the pure functions behind ``planner launch --emit DIR``
(no torch needed); :mod:`planner.launch.local` starts a local run (torchrun or fork) of
:mod:`planner.launch.worker` ranks on :mod:`planner.launch.corpus` data and predicts its
step time; :mod:`planner.launch.device_calibration` is ``planner calibrate --device``. The
commands are :mod:`planner.cli.launch` and :mod:`planner.cli.calibrate`.
"""

from planner.launch.emit import megatron_args, megatron_argv, run_config, torchrun_command, write_emit

__all__ = ["megatron_args", "megatron_argv", "run_config", "torchrun_command", "write_emit"]
