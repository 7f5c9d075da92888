"""Verification on load: does an SAE behave where it is going to be used?

:func:`verify_sae` runs the SAE on a few hundred held-out tokens of the model (by default
the packaged English sample text, so it works on a fresh install) through the one
evaluation path (:func:`~interlayer.saes.evaluation.evaluate_sae`), and

* refuses it (:class:`SAEVerificationError`) when splicing its reconstruction in is worse
  than zero-ablating the site (``ce_loss_recovered < 0``) or when its reconstruction is
  worse than the activations' mean (``explained_variance < 0``): such an SAE belongs to
  another model, site or normalisation;
* warns (:func:`warnings.warn`) when the numbers are implausible for a working SAE:
  L0 = 0 (no latent fires), L0 above half of ``d_sae`` (not sparse), explained variance
  below :data:`LOW_EXPLAINED_VARIANCE` or CE loss recovered below :data:`LOW_CE_RECOVERED`;
* prints one summary line (format, site, d_sae, L0, EV, NMSE, CE rec., KL) unless quiet.

A transcoder (``sae.cfg.transcoder``) reads one site and writes another; it is checked on
the same path: its reconstruction numbers compare its prediction with the output site's
activations, and its CE/KL recovered splice the prediction in at the output site (from the
input site of the same pass), against zero-ablating the output site.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any


from interlayer.errors import InterlayerError
from interlayer.results import Result

from .sae import SAE

VERIFY_TOKENS = 512
"""Held-out tokens of the check by default (a few seconds on a CPU for a small model)."""

VERIFY_CONTEXT_LENGTH = 64
"""Tokens per packed context of the check."""

LOW_EXPLAINED_VARIANCE = 0.5
"""Below this explained variance a loaded SAE is implausible (warned, not refused):
published SAEs explain 0.6 to 0.95 of their site's variance."""

LOW_CE_RECOVERED = 0.5
"""Below this CE loss recovered a loaded SAE is implausible (warned, not refused):
published SAEs recover 0.8 to 0.99 of the loss zero-ablation costs."""

DENSE_L0_FRACTION = 0.5
"""An L0 above this fraction of ``d_sae`` is implausible (warned): the code is not sparse."""

SUMMARY_COLUMNS = ("format", "site", "d_sae", "L0", "EV", "NMSE", "CE rec.", "KL")
"""The columns of the one-line summary."""


class SAEVerificationError(InterlayerError):
    """An SAE whose reconstruction is worse than zero-ablation, or than the mean."""


@dataclass
class SAECheck(Result):
    """What :func:`verify_sae` measured on one SAE, and what it made of it."""

    format: str
    site: str
    d_sae: int
    metrics: dict[str, float]
    """``l0``, ``explained_variance``, ``nmse``, ``ce_loss_recovered``, ``kl_sae`` and
    ``tokens``."""
    warnings: list[str] = field(default_factory=list)
    refusal: str | None = None
    """Why the SAE was refused; ``None``: it passed."""
    spliced: bool = True
    """Whether the CE/KL numbers were measured (checks written before transcoders were
    spliced say ``False`` for a transcoder)."""

    @property
    def passed(self) -> bool:
        """Whether the SAE was accepted (warnings or not)."""
        return self.refusal is None

    def summary(self) -> str:
        """The one-line summary: ``format site d_sae L0 EV NMSE CE rec. KL``."""
        m = self.metrics
        values = (self.format, self.site, str(self.d_sae), _fmt(m.get("l0"), ".1f"),
                  _fmt(m.get("explained_variance"), ".3f"), _fmt(m.get("nmse"), ".3f"),
                  _fmt(m.get("ce_loss_recovered"), ".3f"), _fmt(m.get("kl_sae"), ".3g"))
        line = "  ".join(f"{c}={v}" for c, v in zip(SUMMARY_COLUMNS, values))
        verdict = "refused" if self.refusal else "ok"
        note = "" if self.spliced else " (transcoder: reconstruction only, not spliced)"
        return f"sae check: {line}  [{verdict}{note}]"

    def to_json(self) -> dict[str, Any]:
        """The check as a JSON payload."""
        return {"format": self.format, "site": self.site, "d_sae": self.d_sae, "metrics": dict(self.metrics),
                "warnings": list(self.warnings), "refusal": self.refusal, "spliced": self.spliced,
                "passed": self.passed}

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> "SAECheck":
        """The check :meth:`to_json` described."""
        return cls(str(payload["format"]), str(payload["site"]), int(payload["d_sae"]), dict(payload["metrics"]),
                   list(payload.get("warnings", [])), payload.get("refusal"), bool(payload.get("spliced", True)))

    def headline(self) -> dict[str, Any]:
        """Format, site, width, the numbers and the verdict."""
        return {"format": self.format, "site": self.site, "d_sae": self.d_sae, **self.metrics, "passed": self.passed}


def _fmt(value: float | None, spec: str) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return format(value, spec if abs(value) < 1e4 else ".3g")


def check_sae(sae: SAE, model: Any, *, tokens: int | None = None, data: Any = None,
              context_length: int = VERIFY_CONTEXT_LENGTH, site: str | None = None,
              text_field: str = "text") -> SAECheck:
    """Measure ``sae`` on held-out tokens of ``model`` and judge the numbers, without
    raising or warning (:func:`verify_sae` does both); the arguments are :func:`verify_sae`'s."""
    n = VERIFY_TOKENS if tokens is None else tokens
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InterlayerError(f"tokens must be a whole number of at least 1, got {tokens!r}")
    if data is None:
        from interlayer.model.loading import SAMPLE_TEXT

        data = str(SAMPLE_TEXT)
    site = site or sae.cfg.site
    if site is None:
        raise InterlayerError("the SAE names no site; pass site=, e.g. 'resid_post.6'")
    fmt = str((sae.cfg.origin or {}).get("format") or "interlayer")
    check = _check_sae(sae, model, data, site, n, (context_length, text_field), fmt)
    _judge(check, sae)
    return check


def verify_sae(sae: SAE, model: Any, *, tokens: int | None = None, quiet: bool = False, data: Any = None,
               context_length: int = VERIFY_CONTEXT_LENGTH, site: str | None = None,
               text_field: str = "text") -> SAECheck:
    """Check ``sae`` on held-out tokens of ``model`` and refuse it if it does not work there.

    Args:
        sae: the loaded SAE (its ``cfg.site`` names where it reads, unless ``site``).
        model: the :class:`~interlayer.model.adapter.ModelAdapter` it is used with.
        tokens: how many held-out tokens (default :data:`VERIFY_TOKENS`).
        quiet: no summary line.
        data: the text (default: the packaged sample text).
        context_length: tokens per packed context.
        site: the site (default: the SAE's).
        text_field: the text column of a .jsonl or .parquet ``data``.

    Returns:
        The :class:`SAECheck` (numbers, warnings); each warning is also issued with
        :func:`warnings.warn`.

    Raises:
        SAEVerificationError: CE loss recovered below 0 (worse than zero-ablation) or
            explained variance below 0 (worse than the mean).
    """
    check = check_sae(sae, model, tokens=tokens, data=data, context_length=context_length, site=site,
                      text_field=text_field)
    if not quiet:
        print(check.summary())
    if check.refusal is not None:
        raise SAEVerificationError(check.refusal)
    for message in check.warnings:
        warnings.warn(message, stacklevel=2)
    return check


def _check_sae(sae: SAE, model: Any, data: Any, site: str, tokens: int, packing: tuple[int, str],
               fmt: str) -> SAECheck:
    """The numbers of :func:`~interlayer.saes.evaluation.evaluate_sae` on ``tokens`` tokens
    (``packing``: context length and text field)."""
    from .evaluation import evaluate_sae

    res = evaluate_sae(sae, model, data, site, tokens=tokens, context_length=packing[0], text_field=packing[1],
                       progress=False, per_token_rows=1)
    m = {**res.metrics, **res.spliced}
    keys = ("l0", "explained_variance", "nmse", "ce_loss_recovered", "kl_sae", "tokens")
    where = model.site(site).name
    if sae.cfg.transcoder and sae.cfg.output_site:
        where = f"{where}->{model.site(sae.cfg.output_site).name}"
    return SAECheck(fmt, where, sae.d_sae, {k: float(m[k]) for k in keys if k in m})


def _judge(check: SAECheck, sae: SAE) -> None:
    """Fill ``check.refusal`` and ``check.warnings`` from its numbers (thresholds above)."""
    m = check.metrics
    ev, ce, l0 = m.get("explained_variance", math.nan), m.get("ce_loss_recovered", math.nan), m.get("l0", math.nan)
    where = f"{check.format} SAE at {check.site}"
    hint = "wrong model, site or normalisation?"
    if ce < 0:
        check.refusal = (f"{where}: splicing its reconstruction in is worse than zero-ablating the site "
                         f"(CE loss recovered {ce:.3f} < 0, explained variance {ev:.3f}): {hint}")
    elif ev < 0:
        check.refusal = (f"{where}: its reconstruction is worse than the activations' mean (explained variance "
                         f"{ev:.3f} < 0): {hint}")
    if l0 == 0:
        check.warnings.append(f"{where}: no latent fires on the held-out tokens (L0 = 0)")
    elif l0 > DENSE_L0_FRACTION * sae.d_sae:
        check.warnings.append(f"{where}: L0 {l0:.1f} is above {DENSE_L0_FRACTION:g} of d_sae={sae.d_sae}: not sparse")
    if check.refusal is None and ev < LOW_EXPLAINED_VARIANCE:
        check.warnings.append(f"{where}: explained variance {ev:.3f} is below {LOW_EXPLAINED_VARIANCE}: {hint}")
    if check.refusal is None and ce < LOW_CE_RECOVERED:
        check.warnings.append(f"{where}: CE loss recovered {ce:.3f} is below {LOW_CE_RECOVERED}: {hint}")


__all__ = ["SAECheck", "SAEVerificationError", "check_sae", "verify_sae", "VERIFY_TOKENS",
           "LOW_EXPLAINED_VARIANCE", "LOW_CE_RECOVERED", "DENSE_L0_FRACTION", "SUMMARY_COLUMNS"]
