"""The sweep's grid: a list of :class:`GridMember`, one SAE each, and the text form of
``--grid``::

    topk=16,32,64,128;batchtopk=32;jumprelu=0.001,0.003;relu=0.001,0.003;topafa=authors:1/32,centred:1/64

Each architecture's value is what its registered
:class:`~interlayer.saes.archs.Architecture` sweeps (``swept``): ``k`` for TopK and
BatchTopK, the L1 coefficient for ReLU, the L0 coefficient for JumpReLU, and λ (the AFA
loss coefficient) for top-AFA in the ``centred`` or ``authors`` form, or the authors-exact
mode (a value may be a fraction; a top-AFA value without a form is ``centred``;
``exact:`` is the authors-exact mode). :data:`DEFAULT_GRID` holds the documented default.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from fractions import Fraction

from interlayer.errors import InterlayerError, choices
from interlayer.options import comma_list

from .archs import SAE_ARCHITECTURES, architecture
from .archs.jumprelu import INITIAL_THRESHOLD
from .options import TrainOptions
from .sae import SAEConfig

FORMS = {"centred": ("centred", False), "authors": ("authors", False), "exact": ("authors", True)}
"""Top-AFA value prefixes: the AFA form and whether the authors-exact mode runs."""

DEFAULT_GRID = ("topk=16,32,64,128;batchtopk=32;jumprelu=0.0003,0.003;relu=0.001,0.003;"
                "topafa=authors:1/32,centred:1/64,centred:1/32")
"""The grid when ``--grid`` is not given (restricted to ``--arch``). The ReLU and JumpReLU
coefficients were calibrated on Gemma 3 270M ``resid_post.8`` (standardised inputs, 5,120
latents, 2M tokens; README): in the full 489-step sweep ReLU at 0.01 and 0.03 fell to the
same SAE at L0 below 1 and 0.003 to L0 3.9, while 0.001 ended in TopK's range (L0 107).
JumpReLU's L0 coefficient had no effect in that budget (L0 1,724 at every value
from 1e-5 to 1e-3 after 75 steps; 3e-4 and 3e-3 the same SAE throughout): log(theta) moves
about lr per step, so the initial threshold (``--jumprelu-threshold``, 0.25 on that data)
sets its L0."""


def family(arch: str, afa_form: str | None, exact: bool) -> str:
    """The line an SAE belongs to in the Pareto figure and the matched-L0 table: its
    architecture, top-AFA per form (``topafa (centred)``, ``topafa (authors-exact)``)."""
    if afa_form is None:
        return arch
    return f"{arch} (authors-exact)" if exact else f"{arch} ({afa_form})"


@dataclass(frozen=True)
class GridMember:
    """One SAE of a sweep: an architecture and its sparsity setting."""

    arch: str
    value: float
    """``k`` (topk, batchtopk), the L1 coefficient (relu), the L0 coefficient (jumprelu) or λ (topafa)."""
    afa_form: str | None = None
    exact: bool = False
    text: str = ""
    """The value as written (kept for the member's name)."""

    @property
    def name(self) -> str:
        """The member's directory name, e.g. ``topk-k32`` or ``topafa-centred-1_32``."""
        shown = re.sub(r"[^0-9A-Za-z.+-]", "_", self.text or f"{self.value:g}")
        if architecture(self.arch).takes_k:
            return f"{self.arch}-k{int(self.value)}"
        if self.afa_form is not None:
            return f"{self.arch}-{'exact' if self.exact else self.afa_form}-{shown}"
        return f"{self.arch}-{shown}"

    @property
    def family(self) -> str:
        """The line the member belongs to in the Pareto figure (:func:`family`)."""
        return family(self.arch, self.afa_form, self.exact)

    @property
    def coefficient(self) -> float | None:
        """The swept loss coefficient (``None`` where the grid value is ``k``)."""
        return None if architecture(self.arch).takes_k else self.value

    def sae_config(self, d_in: int, d_sae: int, normalization: str, model: str | None, site: str | None,
                   jumprelu_threshold: float = INITIAL_THRESHOLD) -> SAEConfig:
        k = int(self.value) if architecture(self.arch).takes_k else None
        return SAEConfig(d_in=d_in, d_sae=d_sae, arch=self.arch, k=k, normalization=normalization,
                         afa_form=self.afa_form, authors_exact=self.exact, jumprelu_init_threshold=jumprelu_threshold,
                         model=model, site=site)

    def train_options(self, base: TrainOptions) -> TrainOptions:
        """``base`` with this member's coefficient in place."""
        field = architecture(self.arch).swept
        return dataclasses.replace(base, **({field: float(self.value)} if field not in (None, "k") else {}))


def _number(text: str, arch: str) -> float:
    try:
        return float(Fraction(text.strip())) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError):
        raise InterlayerError(f"grid value {text!r} for {arch} is not a number (write e.g. 32, 0.001 or 1/32)") from None


def parse_grid(text: str | None, archs: list[str] | tuple[str, ...], latents: int) -> list[GridMember]:
    """The members of a grid string (see the module docstring), restricted to ``archs``;
    an architecture of ``archs`` the text does not mention takes :data:`DEFAULT_GRID`'s
    values. Every value is checked against its range here, before any training."""
    unknown = [a for a in archs if a not in list(SAE_ARCHITECTURES)]
    if unknown:
        raise InterlayerError(f"unknown architecture(s) {choices(unknown)} in --arch; valid choices: "
                              f"{choices(list(SAE_ARCHITECTURES))}")
    given = _split(text) if text else {}
    extra = [a for a in given if a not in archs]
    if extra:
        raise InterlayerError(f"--grid names {choices(extra)}, which --arch ({','.join(archs)}) leaves out")
    default = _split(DEFAULT_GRID)
    members: list[GridMember] = []
    for arch in archs:
        for value in given.get(arch, default.get(arch, [])):
            members.append(_member(arch, value, latents))
    names = [m.name for m in members]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InterlayerError(f"the grid lists {choices(twice)} more than once")
    if not members:
        raise InterlayerError("the grid is empty")
    return members


def _split(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        arch, sep, values = part.partition("=")
        arch = arch.strip()
        if not sep or not values.strip():
            raise InterlayerError(f"grid entry {part!r} is not ARCH=V,V,...; e.g. 'topk=16,32;topafa=centred:1/32'")
        if arch not in list(SAE_ARCHITECTURES):
            raise InterlayerError(f"unknown architecture {arch!r} in --grid; valid choices: {choices(list(SAE_ARCHITECTURES))}")
        out.setdefault(arch, []).extend(comma_list(values, kind="grid values", example="topk=16,32"))
    return out


def _member(arch: str, value: str, latents: int) -> GridMember:
    form, exact = None, False
    if arch == "topafa":
        prefix, sep, rest = value.partition(":")
        if sep:
            if prefix not in FORMS:
                raise InterlayerError(f"unknown top-AFA form {prefix!r} in grid value {value!r}; valid choices: "
                                      f"{choices(FORMS)}")
            form, exact = FORMS[prefix]
            value = rest
        else:
            form = "centred"
    elif ":" in value:
        raise InterlayerError(f"grid value {value!r}: only top-AFA values take a form prefix")
    number = _number(value, arch)
    if architecture(arch).takes_k:
        if number != int(number) or not 1 <= number <= latents:
            raise InterlayerError(f"grid value k={value} for {arch} is out of range: k must be a whole number from 1 "
                                  f"to the number of latents ({latents})")
    elif not (number >= 0 and math.isfinite(number)):
        name = architecture(arch).swept_name or "the coefficient"
        raise InterlayerError(f"grid value {value} for {arch} is out of range: {name} must be a finite number >= 0")
    return GridMember(arch, number, form, exact, value)


__all__ = ["FORMS", "DEFAULT_GRID", "GridMember", "family", "parse_grid"]
