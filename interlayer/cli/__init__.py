"""The command line: the option registry (:mod:`.registry`), the core commands
(:mod:`.commands`, :mod:`.config`) and the dispatcher (:mod:`.dispatch`). The only part
of the core that reaches the method packages, and only through ``importlib``."""

from .dispatch import discover, main

__all__ = ["discover", "main"]
