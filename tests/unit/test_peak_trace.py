"""benchmarks/peak_trace.py: the peak it reports is where the memory was allocated."""

from __future__ import annotations

import atexit
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks import peak_trace  # noqa: E402


def _allocate_and_hold(report):
    block = np.ones(300 * 2**20 // 8)  # 300 MiB, touched
    time.sleep(0.3)
    report()  # while the block is held
    return float(block[-1])


def test_the_peak_is_found_in_the_function_that_allocated(capsys):
    report = peak_trace.start(step_mb=100.0, interval_s=0.005)
    atexit.unregister(report)
    assert _allocate_and_hold(report) == 1.0
    err = capsys.readouterr().err
    peak_line = next(line for line in err.splitlines() if line.startswith("==== peak"))
    assert int(peak_line.split()[2]) > 300
    assert "_allocate_and_hold" in err.split("==== peak")[1]
    assert "_allocate_and_hold" in err.split("==== peak")[0]  # the timeline's step up


def test_a_missing_command_is_refused(capsys):
    import pytest

    with pytest.raises(SystemExit):
        peak_trace.main(["--"])
    assert "give the interlayer command after --" in capsys.readouterr().err
