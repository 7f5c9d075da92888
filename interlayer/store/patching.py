"""Activation patching through the store: record a run's activations at sites x
positions, then run another input (or the same input, corrupted) with edits that put
them back, one restoration per variant of :func:`~interlayer.collect_variants`.

Nothing here hooks the model: the corruption is a shared ``edits=`` of the variants, each
restoration a variant's edit, so every restoration resumes from the corrupted prefix the
store computed once (a restoration at layer ``l`` runs only the blocks after ``l``), and
the write gates check every edit.

* Corruption: :class:`EmbeddingNoise` (ROME, Meng et al. 2022: Gaussian noise of a
  given standard deviation, 3x the subject embeddings' in the paper, at chosen positions
  of ``resid_pre.0``, seeded, several samples per input) or a counterfactual input of the
  same length (:func:`patch_grid` with ``source`` recorded from the clean input and the
  counterfactual run as the target).
* Denoising (run the corrupted input, restore clean activations) and noising (run the
  clean input, patch in the corrupted activations) between prompt pairs:
  :func:`denoising` and :func:`noising`.

The metric is the probability of a target token at the last position, from the final
norm's output through the model's own head (soft-cap included).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from ..errors import InterlayerError
from ..model.adapter import ModelAdapter
from .capture import Edit
from .collect import collect, collect_variants

EMBED_SITE = "resid_pre.0"
"""Where :class:`EmbeddingNoise` is added: the input of block 0 (the token embedding,
scaled where the architecture scales it; for GPT-2 with its position embedding added)."""


@dataclass(frozen=True)
class EmbeddingNoise:
    """ROME's corruption: ``std`` x standard Gaussian noise added at ``positions`` of
    ``resid_pre.0``, ``samples`` independent draws (one row each), from ``seed``.

    Attributes:
        positions: token positions to corrupt (0 = the first token, BOS included).
        std: the noise's standard deviation (ROME: 3 x :func:`embedding_std`).
        samples: rows of noise; the input runs once per sample.
        seed: the generator's seed (noise drawn on the CPU in float32, then cast).
    """

    positions: tuple[int, ...]
    std: float
    samples: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.positions:
            raise InterlayerError("EmbeddingNoise needs at least one position to corrupt")
        if self.samples < 1:
            raise InterlayerError(f"samples must be at least 1, got {self.samples}")
        if not self.std > 0:
            raise InterlayerError(f"the noise's std must be positive, got {self.std}")

    def noise(self, d_model: int) -> torch.Tensor:
        """``[samples, len(positions), d_model]`` float32: the noise itself."""
        generator = torch.Generator().manual_seed(self.seed)
        return torch.randn((self.samples, len(self.positions), d_model), generator=generator) * self.std

    def edit(self, d_model: int) -> Edit:
        """The store edit adding :meth:`noise` (rows of the batch = samples)."""
        noise, positions = self.noise(d_model), list(self.positions)

        def corrupt(x: torch.Tensor) -> torch.Tensor:
            if x.shape[0] != noise.shape[0] or max(positions) >= x.shape[1]:
                raise InterlayerError(f"the noise holds {noise.shape[0]} samples for positions up to {max(positions)}, "
                                      f"the batch is {x.shape[0]} rows of {x.shape[1]} tokens")
            out = x.clone()
            out[:, positions] += noise.to(x.device, x.dtype)
            return out

        return Edit(corrupt)


def embedding_std(model: ModelAdapter, texts: Sequence[str] | Sequence[Sequence[int]]) -> float:
    """The standard deviation of every value of ``resid_pre.0`` over the tokens of
    ``texts`` (BOS excluded): ROME's ``collect_embedding_std`` over the subjects."""
    acts = collect(model, list(texts), EMBED_SITE, select="tokens", progress=False, storage_dtype="float32")
    return float(acts[EMBED_SITE].double().std())


def record(model: ModelAdapter, ids: Sequence[int], sites: Sequence[str],
           edits: Mapping[str, Edit] | None = None) -> dict[str, torch.Tensor]:
    """``{site: [len(ids), d_model]}``: one input's activations at every position (BOS
    included), in the model's dtype, optionally under ``edits`` (a corrupted run's)."""
    acts = collect(model, [list(ids)], list(sites), select="positions", positions=[list(range(len(ids)))],
                   edits=edits, progress=False, check_padding=False)
    return {site: acts[site] for site in sites}


def restore(value: torch.Tensor, position: int) -> Edit:
    """An edit writing ``value`` (``[d_model]``) at ``position`` of every row."""
    def fn(x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        out[:, position] = value.to(x.device, x.dtype)
        return out

    return Edit(fn)


def target_probability(model: ModelAdapter, final: torch.Tensor, target: int) -> torch.Tensor:
    """``softmax(head(final))[..., target]`` in float32: the probability of ``target``
    from final-norm states ``[..., d_model]`` (the model's own head, soft-cap included)."""
    with torch.no_grad():
        logits = model.head(final.to(model.device, model.dtype)).float()
    return torch.softmax(logits, dim=-1)[..., target].cpu()


def patched_final_states(model: ModelAdapter, ids: Sequence[int], patches: Sequence[Mapping[str, Edit]],
                         corruption: Mapping[str, Edit] | None = None, rows: int = 1) -> torch.Tensor:
    """``[1 + len(patches), rows, d_model]``: the final-norm state at the last position of
    ``ids`` (repeated ``rows`` times) under ``corruption`` alone, then under each patch
    too. One store call: the patches resume from the corrupted prefix."""
    n = len(ids)
    outs = collect_variants(model, [list(ids)] * rows, ["ln_final"], [{}, *patches], edits=corruption,
                            select="last", batch_size=rows, batch_tokens=rows * n, progress=False,
                            check_padding=False)
    return torch.stack([o["ln_final"] for o in outs])


@dataclass
class PatchGrid:
    """The target token's probability under each (group of sites, position) patch.

    Attributes:
        groups: the site groups patched together (one site each for the residual stream).
        positions: the patched positions.
        base: the probability with no patch (the corrupted or target run).
        probability: ``[len(groups), len(positions)]``, mean over the rows (noise samples).
    """

    groups: list[tuple[str, ...]]
    positions: list[int]
    base: float
    probability: torch.Tensor


def patch_grid(model: ModelAdapter, ids: Sequence[int], source: Mapping[str, torch.Tensor],
               groups: Sequence[Sequence[str]], positions: Sequence[int], target: int,
               corruption: Mapping[str, Edit] | None = None, rows: int = 1, first_changed: int = 0) -> PatchGrid:
    """Run ``ids`` (under ``corruption``, ``rows`` times) once per (group, position),
    with each site of the group set to ``source[site][position]`` (from :func:`record`),
    and read the probability of ``target`` at the last position.

    ``first_changed``: the first position where the run differs from the source's (the
    first corrupted or differing token). A causal model's state at an earlier position is
    the same in both runs, so patching it changes nothing: those cells are ``base``
    without a pass (and without the no-op warning a pass would raise)."""
    missing = sorted({s for g in groups for s in g} - set(source))
    if missing:
        raise InterlayerError(f"no recorded activations for {missing[:3]}; record every patched site first")
    bad = [p for p in positions if not 0 <= p < len(ids)]
    if bad:
        raise InterlayerError(f"positions {bad[:3]} are outside the {len(ids)}-token input")
    cells = [(i, j) for i in range(len(groups)) for j, p in enumerate(positions) if p >= first_changed]
    patches = [{site: restore(source[site][positions[j]], positions[j]) for site in groups[i]} for i, j in cells]
    states = patched_final_states(model, ids, patches, corruption, rows)
    probs = target_probability(model, states, target).mean(-1)
    grid = torch.full((len(groups), len(positions)), float(probs[0]))
    for (i, j), value in zip(cells, probs[1:].tolist()):
        grid[i, j] = value
    return PatchGrid([tuple(g) for g in groups], list(positions), float(probs[0]), grid)


def _between(model: ModelAdapter, run: Sequence[int], source: Sequence[int], sites: Sequence[str], target: int,
             positions: Sequence[int] | None) -> PatchGrid:
    """Run ``run`` with ``source``'s activation patched in at each (site, position); the
    two prompts must be as long, and positions before their first difference are equal."""
    if len(run) != len(source):
        raise InterlayerError(f"patching between prompts needs inputs of the same length; got {len(source)} and "
                              f"{len(run)} tokens")
    first = next((i for i, (a, b) in enumerate(zip(run, source)) if a != b), len(run))
    recorded = record(model, source, sites)
    return patch_grid(model, run, recorded, [(s,) for s in sites], list(positions or range(len(run))), target,
                      first_changed=first)


def denoising(model: ModelAdapter, clean: Sequence[int], corrupted: Sequence[int], sites: Sequence[str], target: int,
              positions: Sequence[int] | None = None) -> PatchGrid:
    """Run ``corrupted`` and restore ``clean``'s activation at each (site, position):
    how much of ``target``'s probability each restores."""
    return _between(model, corrupted, clean, sites, target, positions)


def noising(model: ModelAdapter, clean: Sequence[int], corrupted: Sequence[int], sites: Sequence[str], target: int,
            positions: Sequence[int] | None = None) -> PatchGrid:
    """Run ``clean`` and patch in ``corrupted``'s activation at each (site, position):
    how much of ``target``'s probability each destroys."""
    return _between(model, clean, corrupted, sites, target, positions)


__all__ = ["EMBED_SITE", "EmbeddingNoise", "PatchGrid", "denoising", "embedding_std", "noising", "patch_grid",
           "patched_final_states", "record", "restore", "target_probability"]
