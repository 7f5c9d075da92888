"""The one progress bar of the toolkit.

In Jupyter with ipywidgets installed, the notebook widget; everywhere else (terminals,
scripts, and Jupyter kernels without ipywidgets) the plain text bar. ``tqdm.auto`` alone
would pick the widget in every kernel and, without ipywidgets, warn ("IProgress not
found") on every import, into the notebook's output.
"""

from __future__ import annotations

import importlib.util
import sys

__all__ = ["tqdm"]


def _in_notebook_kernel() -> bool:
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    try:
        ip = shell.get_ipython()
    except AttributeError:  # pragma: no cover - an IPython without get_ipython
        return False
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})


if _in_notebook_kernel() and importlib.util.find_spec("ipywidgets") is not None:
    from tqdm.notebook import tqdm
else:
    from tqdm import tqdm
