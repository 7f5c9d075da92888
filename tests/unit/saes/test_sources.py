"""The trainer's declared contract with its sources: every source class implements the
:class:`Source` protocol, and how ranks share batches is an explicit :class:`Placement`."""

import pytest
import torch

from interlayer.distributed import SINGLE, World
from interlayer.errors import InterlayerError
from interlayer.saes.layer_parallel import ScatteredSource
from interlayer.saes.sources import CachedSource, Placement, Source, StreamedSource, TensorSource


def test_every_source_class_declares_the_protocol():
    for cls in (TensorSource, CachedSource, StreamedSource, ScatteredSource):
        assert Source in cls.__mro__, cls  # declared by inheritance, not only matched by shape
    source = TensorSource(torch.randn(64, 4), 32, site="resid_post.0")
    assert isinstance(source, Source)
    assert source.sites == ["resid_post.0"] and source.placement == Placement() and source.d_in == 4
    assert next(source.batches(None, whole=True)).x.shape == (32, 4)


def test_a_placement_is_one_process_unless_a_world_is_given():
    one = Placement()
    assert not one.data_parallel and one.trainers is SINGLE and one.part(96) == 96
    assert one.align(3, {"batches": 3}) == (3, {"batches": 3}) and one.any_active(True) and not one.any_active(False)
    two = World(rank=1, size=2, local_rank=1)
    split = Placement(two, split=True)
    assert split.data_parallel and split.trainers is two and split.part(96) == 48
    collective = Placement(two, collective=True)
    assert not collective.data_parallel and collective.trainers is SINGLE and collective.part(96) == 96
    with pytest.raises(InterlayerError, match="not both"):
        Placement(two, split=True, collective=True)
