"""The toolkit's one progress bar: the plain bar outside a Jupyter kernel (and in a
kernel without ipywidgets, where tqdm.auto would warn into the notebook)."""

import warnings

import tqdm as tqdm_package

from interlayer import progress


def test_outside_a_kernel_the_plain_bar_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert progress.tqdm is tqdm_package.tqdm
        assert not progress._in_notebook_kernel()
        assert list(progress.tqdm(range(3), disable=True)) == [0, 1, 2]
