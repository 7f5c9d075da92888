"""Running one job on several processes with ``torch.distributed`` (launched by ``torchrun``).

interlayer schedules nothing itself: ``torchrun`` starts the processes and sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous; :func:`init` joins the process group
(NCCL when the process has a GPU, gloo otherwise) and returns the :class:`World`. Every
collective goes through the helpers here, which give each one the group's timeout and
turn a failure (a rank that died, a collective that timed out) into
:class:`RankFailedError` naming the operation, so every surviving rank stops with the same
clear message instead of hanging.

* :func:`check_same` compares a config across ranks at start and names the first field
  that differs;
* :func:`raise_together` makes a problem found by one rank (a missing shard) an error on
  every rank;
* :func:`average_gradients` is the data-parallel step (one all-reduce of a flat buffer,
  the arithmetic of DDP: the mean of the ranks' gradients).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from .errors import InterlayerError

__all__ = ["World", "SINGLE", "RankFailedError", "init", "current", "launched", "check_same", "raise_together",
           "average_gradients", "all_gather_cat", "all_reduce", "broadcast_object", "barrier", "split_evenly",
           "join", "leave", "device_of", "gather_objects", "comm_device", "send", "recv", "gather", "DEFAULT_TIMEOUT_S"]

DEFAULT_TIMEOUT_S = 1800.0
"""Seconds a collective may wait for the other ranks before every rank stops (30 min: in
layer-parallel training each rank evaluates its own SAEs before the ranks meet again, and
their evaluations may differ in length)."""


class RankFailedError(InterlayerError):
    """A collective failed: another rank died, or did not arrive within the timeout."""


@dataclass(frozen=True)
class World:
    """This process's place in the job: ``rank`` of ``size`` processes, ``local_rank`` on its node."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes metrics, figures and artifacts, and shows progress."""
        return self.rank == 0

    def __str__(self) -> str:
        return f"rank {self.rank} of {self.size}"


SINGLE = World()
"""The world of a plain (not distributed) process."""


def launched() -> bool:
    """Whether this process was started by ``torchrun`` (or another launcher) as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def current() -> World:
    """The world of this process: :data:`SINGLE` unless a process group is initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        return SINGLE
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))


def init(timeout_s: float = DEFAULT_TIMEOUT_S, backend: str | None = None) -> World:
    """Join the process group ``torchrun`` set up (a no-op outside a launch, or when joined).

    The backend is NCCL when CUDA is available and gloo otherwise; ``timeout_s`` bounds
    every collective. With NCCL each process takes the GPU of its ``LOCAL_RANK``.
    """
    if not launched():
        return SINGLE
    if not dist.is_available():
        raise InterlayerError("this torch build has no torch.distributed; install one that has it to run on several processes")
    if dist.is_initialized():
        return current()
    missing = [v for v in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise InterlayerError(f"WORLD_SIZE is set but {', '.join(missing)} is not: launch with torchrun "
                              "(torchrun --nproc-per-node N -m interlayer ...)")
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend not in ("nccl", "gloo"):
        raise InterlayerError(f"unknown backend {backend!r}; valid choices: 'nccl', 'gloo'")
    local_rank = int(os.environ["LOCAL_RANK"])
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    with _failing("joining the process group"):
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return current()


def join(config: Any, timeout_s: float = DEFAULT_TIMEOUT_S) -> World:
    """:func:`init`, then :func:`check_same` on every field of the command's ``config``
    (a dataclass): a rank started with other options stops every rank, naming the field."""
    world = init(timeout_s)
    if world.distributed:
        import dataclasses

        check_same({f.name: repr(getattr(config, f.name)) for f in dataclasses.fields(config)}, "option")
    return world


def leave(together: bool = True) -> None:
    """Leave the process group (at the end of a command run under torchrun; a no-op
    outside one). ``together``: first wait for every rank at a barrier, so no rank tears
    down its connections while another still uses them (gloo aborts a process whose
    peer went away mid-way); on an error path pass ``together=False``."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    if together:
        barrier("leaving the process group")
    dist.destroy_process_group()


def device_of(world: World, requested: str | None) -> str | None:
    """The device a rank runs on: its own GPU (``cuda:LOCAL_RANK``) when none is requested
    and the process group runs NCCL; otherwise ``requested``."""
    if requested is None and world.distributed and dist.get_backend() == "nccl":
        return f"cuda:{world.local_rank}"
    return requested


@contextmanager
def _failing(what: str) -> Iterator[None]:
    try:
        yield
    except (RuntimeError, ConnectionError) as err:  # DistBackendError is a RuntimeError
        world = current()
        raise RankFailedError(
            f"{what} failed on {world}: another rank stopped or did not arrive in time ({_short(err)}); "
            "every rank stops. Look for the first error above (the rank that failed); checkpoints written "
            "so far are kept, and the same command resumes") from err


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__


def comm_device() -> torch.device:
    """Where a collective's tensors must live: the process's GPU under NCCL, else the CPU."""
    if current().distributed and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def send(tensor: torch.Tensor, dst: int, what: str = "sending a tensor") -> None:
    """Point-to-point send (the tensor on :func:`comm_device`)."""
    with _failing(what):
        dist.send(tensor, dst)


def recv(tensor: torch.Tensor, src: int, what: str = "receiving a tensor") -> None:
    """Point-to-point receive into ``tensor`` (on :func:`comm_device`)."""
    with _failing(what):
        dist.recv(tensor, src)


def gather(tensor: torch.Tensor, parts: list[torch.Tensor] | None, dst: int, what: str = "a gather") -> None:
    """Every rank's ``tensor`` (same shape) into ``parts`` on rank ``dst`` (``None`` elsewhere)."""
    with _failing(what):
        dist.gather(tensor, parts, dst=dst)


def barrier(what: str = "a barrier") -> None:
    if current().distributed:
        with _failing(what):
            dist.barrier()


def all_reduce(tensor: torch.Tensor, op: str = "sum", what: str = "an all-reduce") -> torch.Tensor:
    """Reduce ``tensor`` in place over the ranks (``sum``, ``max`` or ``min``); returns it."""
    if current().distributed:
        ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
        with _failing(what):
            dist.all_reduce(tensor, op=ops[op])
    return tensor


def all_gather_cat(tensor: torch.Tensor, what: str = "an all-gather") -> torch.Tensor:
    """The ranks' 1-d tensors concatenated in rank order (they may differ in length)."""
    world = current()
    if not world.distributed:
        return tensor
    with _failing(what):
        sizes = [torch.zeros(1, dtype=torch.long, device=tensor.device) for _ in range(world.size)]
        dist.all_gather(sizes, torch.tensor([tensor.numel()], device=tensor.device))
        longest = int(max(int(s) for s in sizes))
        padded = torch.zeros(longest, dtype=tensor.dtype, device=tensor.device)
        padded[: tensor.numel()] = tensor.reshape(-1)
        parts = [torch.empty_like(padded) for _ in range(world.size)]
        dist.all_gather(parts, padded)
    return torch.cat([p[: int(n)] for p, n in zip(parts, sizes)])


def broadcast_object(obj: Any, src: int = 0, what: str = "a broadcast") -> Any:
    """``obj`` of rank ``src`` on every rank (pickled; for small state, not for bulk tensors)."""
    if not current().distributed:
        return obj
    box = [obj]
    with _failing(what):
        dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: Any, what: str = "an all-gather") -> list[Any]:
    """Every rank's ``obj`` (pickled), in rank order, on every rank."""
    return _all_objects(obj, what)


def _all_objects(obj: Any, what: str) -> list[Any]:
    world = current()
    if not world.distributed:
        return [obj]
    out: list[Any] = [None] * world.size
    with _failing(what):
        dist.all_gather_object(out, obj)
    return out


def check_same(values: Mapping[str, Any], what: str = "config") -> None:
    """Stop every rank when ``values`` (a flat mapping of field -> value) differs between
    ranks, naming the first field that differs and its value on each rank."""
    gathered = _all_objects(dict(values), f"comparing the {what} across ranks")
    first = gathered[0]
    for rank, other in enumerate(gathered[1:], start=1):
        for key in sorted(set(first) | set(other)):
            if first.get(key) != other.get(key):
                raise InterlayerError(
                    f"the ranks were started with different {what}s: {key} is {first.get(key)!r} on rank 0 and "
                    f"{other.get(key)!r} on rank {rank}; every rank must get the same command")


def raise_together(error: BaseException | None, what: str) -> None:
    """Make one rank's error every rank's: each passes the error it met (or ``None``);
    when any rank met one, every rank raises an :class:`InterlayerError` with its message."""
    if not current().distributed:
        if error is not None:
            raise error
        return
    messages = _all_objects(None if error is None else str(error), what)
    failed = [(rank, text) for rank, text in enumerate(messages) if text is not None]
    if failed:
        rank, text = failed[0]
        if error is not None and rank == current().rank:
            raise error
        raise InterlayerError(f"rank {rank} stopped while {what}: {text}")


def average_gradients(parameters: Sequence[torch.nn.Parameter], what: str = "averaging the gradients") -> None:
    """Replace each parameter's ``.grad`` by its mean over the ranks: one all-reduce of
    one flat buffer (DDP's arithmetic, without its bucketing)."""
    world = current()
    if not world.distributed:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    with _failing(what):
        dist.all_reduce(flat)
    flat.div_(world.size)
    offset = 0
    for g in grads:
        g.copy_(flat[offset: offset + g.numel()].view_as(g))
        offset += g.numel()


def split_evenly(total: int, world: World, what: str) -> int:
    """This rank's share of ``total`` items split evenly; an error when they do not divide."""
    if total % world.size:
        raise InterlayerError(f"{what} of {total} does not split evenly over {world.size} ranks; use a multiple "
                              f"of {world.size} (e.g. {total - total % world.size or world.size})")
    return total // world.size
