"""One padding function for every batch: left and right, against a direct layout."""

from __future__ import annotations

import pytest
import torch

from interlayer.errors import InterlayerError
from interlayer.model.padding import pad_rows, row_span


def test_pad_rows_right_and_left():
    rows = [[5, 6, 7], [8], [9, 10]]
    ids, mask = pad_rows(rows, 0, "right")
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0], [9, 10, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0]]
    ids, mask = pad_rows(rows, -1, "left")
    assert ids.tolist() == [[5, 6, 7], [-1, -1, 8], [-1, 9, 10]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 1, 1]]
    assert ids.dtype == mask.dtype == torch.long
    assert row_span(1, 3, "left") == slice(2, 3) and row_span(1, 3, "right") == slice(0, 1)


def test_pad_rows_bad_input():
    with pytest.raises(InterlayerError, match="'left', 'right'"):
        pad_rows([[1]], 0, "middle")
    with pytest.raises(InterlayerError, match="no rows"):
        pad_rows([], 0, "left")
