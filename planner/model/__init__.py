"""Reference PyTorch model of the architectures a :class:`~planner.specs.ModelSpec` describes.

Needs torch (the ``model`` extra); the planner itself does not import this package.
"""

from planner.model.deepseek import Transformer

__all__ = ["Transformer"]
