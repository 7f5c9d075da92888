"""The host path of the store: rows copied from the device buffers to host memory while the
model computes.

On a CUDA model with ``output_device="cpu"`` each read site's rows are copied as soon as its
hook has written them into the device buffer (:class:`~interlayer.store.capture.Capture`):
``non_blocking`` on a side stream, into pinned host memory, so the copy overlaps the blocks
after that site and the next batches. A chunk's host tensors reach the consumer only once its
copies are done (:meth:`HostRows.wait`), which :func:`~interlayer.stream` calls after it has
launched the next batch: the consumer holds chunk n while chunk n + 1 fills.

**Reuse, and why nothing a consumer holds is ever overwritten.** Each chunk's host tensors are
fresh ``torch.empty(..., pin_memory=True)``. PyTorch's caching host allocator serves them from
the pinned blocks freed earlier, and only once the copies recorded on a block are done. A
consumer that drops each chunk (``collect``, the cache writer) therefore cycles through the
same two chunks of pinned memory, allocated once; one that keeps its chunks keeps their
memory, and the store never writes to it again. The device buffers are reused from chunk to
chunk: the compute stream waits for the side stream's copies before the first write of a new
chunk (:meth:`HostStage.before_write`), a wait on the device that costs the host nothing.

:class:`HostStage` is the plain reference (copies made at once into ordinary tensors; the
fences are no-ops); :class:`CudaHostStage` overrides the allocation, the copy, the fence and
the event. Tests substitute a stage that defers every copy to its synchronisation points, so
the ordering is checked on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["CudaHostStage", "HostRows", "HostStage", "host_stage"]


@dataclass
class HostRows:
    """A chunk's rows: ready now (``event`` is ``None``) or once ``event`` has completed."""

    tensors: dict[str, torch.Tensor]
    event: Any = None

    @property
    def ready(self) -> bool:
        """Whether :meth:`wait` returns without waiting."""
        return self.event is None

    def wait(self) -> dict[str, torch.Tensor]:
        """The host tensors, once their copies are done (blocks the host until then)."""
        if self.event is not None:
            self.event.synchronize()
            self.event = None
        return self.tensors


class HostStage:
    """Copies of a capture's rows to host memory, one chunk at a time: :meth:`open` before the
    chunk's first batch, :meth:`copy` after each write into the device buffers, :meth:`close`
    when the chunk is full. This base class copies synchronously into ordinary host tensors
    (for a model on an accelerator without streams); :class:`CudaHostStage` is asynchronous."""

    asynchronous = False
    """Whether :meth:`close` may hand back rows that are not ready yet."""

    def __init__(self) -> None:
        self.buffers: dict[str, torch.Tensor] = {}
        self.host: dict[str, torch.Tensor] = {}
        self._fenced = True

    def open(self, buffers: dict[str, torch.Tensor]) -> None:
        """Start a chunk written into ``buffers`` (the capture's device buffers): fresh host
        tensors of the same shapes; the first write must wait for the last chunk's copies."""
        self.buffers = buffers
        self.host = {name: self._empty_like(buffer) for name, buffer in buffers.items()}
        self._fenced = False

    def before_write(self) -> None:
        """Call before writing into the device buffers: on a chunk's first write, order it
        after every copy of the previous chunk (which read the same buffer rows)."""
        if not self._fenced:
            self._fence()
            self._fenced = True

    def copy(self, name: str, start: int, stop: int) -> None:
        """Copy rows ``start:stop`` of buffer ``name`` (just written) to the host."""
        self._copy(self.host[name][start:stop], self.buffers[name][start:stop])

    def close(self, rows: int) -> HostRows:
        """End the chunk: its first ``rows`` host rows, ready once the copies are done."""
        tensors = {name: tensor[:rows] for name, tensor in self.host.items()}
        self.host = {}
        return HostRows(tensors, self._event())

    # the four operations an asynchronous stage replaces
    def _empty_like(self, buffer: torch.Tensor) -> torch.Tensor:
        return torch.empty(buffer.shape, dtype=buffer.dtype)

    def _copy(self, host: torch.Tensor, rows: torch.Tensor) -> None:
        host.copy_(rows)

    def _fence(self) -> None:
        pass

    def _event(self) -> Any:
        return None


class CudaHostStage(HostStage):
    """Pinned host tensors, written ``non_blocking`` on a side stream that waits for each
    write; one event per chunk (see the module docstring)."""

    asynchronous = True

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.device = device
        self.stream = torch.cuda.Stream(device)

    def open(self, buffers: dict[str, torch.Tensor]) -> None:
        """As :meth:`HostStage.open`; the device buffers are marked as used by the side
        stream, so freeing them never hands their memory out while a copy reads it."""
        for buffer in buffers.values():
            buffer.record_stream(self.stream)  # a set: marking a buffer again is a no-op
        super().open(buffers)

    def _empty_like(self, buffer: torch.Tensor) -> torch.Tensor:
        return torch.empty(buffer.shape, dtype=buffer.dtype, pin_memory=True)

    def _copy(self, host: torch.Tensor, rows: torch.Tensor) -> None:
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            host.copy_(rows, non_blocking=True)

    def _fence(self) -> None:
        torch.cuda.current_stream(self.device).wait_stream(self.stream)

    def _event(self) -> Any:
        event = torch.cuda.Event()
        event.record(self.stream)
        return event


def host_stage(device: torch.device, on_device: bool) -> HostStage | None:
    """The stage of a store pass whose model runs on ``device``: ``None`` where the rows stay
    where they are written (``output_device="model"``, or a CPU model, whose buffers are host
    memory already and are handed over uncopied); :class:`CudaHostStage` on CUDA; the
    synchronous :class:`HostStage` on any other accelerator."""
    if on_device or device.type == "cpu":
        return None
    if device.type == "cuda":
        return CudaHostStage(device)
    return HostStage()
