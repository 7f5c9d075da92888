"""Where the tests find ``../shared`` (the project's data folder beside the clone).

A user's clone has no ``../shared``: every test that reads it has a packaged fallback and
carries the ``shared`` mark. ``make test`` runs those tests a second time with
``INTERLAYER_HIDE_SHARED=1``, so the fallbacks are exercised on every CI run.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def shared_file(*parts: str) -> Path | None:
    """The file ``../shared/<parts>``, or ``None`` when it is absent or hidden."""
    if os.environ.get("INTERLAYER_HIDE_SHARED") == "1":
        return None
    path = ROOT.parent.joinpath("shared", *parts)
    return path if path.is_file() else None
