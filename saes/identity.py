"""Does a loaded SAE belong where it is asked to go? The static half of verification on
load (:func:`interlayer.saes.load`): the site its files name against the one asked for,
its width against the site's, the model its files name against the model given. The
behavioural half (reconstruction and spliced loss on held-out tokens) is
:mod:`interlayer.saes.verify`.

Sites are compared in interlayer's naming (``blocks.6.hook_resid_post``,
``model.layers.6.output`` and ``layers.6`` all name ``resid_post.6``). Model names are
compared without the organisation and case (``google/gemma-3-270m`` is ``gemma-3-270m``);
a base model against its instruction-tuned variant (``-it``, ``-instruct``, ``-chat``) is
a warning, any other difference an error.
"""

from __future__ import annotations

import re
import warnings
from typing import TYPE_CHECKING

from interlayer.errors import InterlayerError, UnknownSiteError
from interlayer.model.sites import parse_site

if TYPE_CHECKING:
    from interlayer.model.adapter import ModelAdapter

    from .sae import SAE

__all__ = ["SAEMismatchError", "canonical_site", "check_identity", "refuse_siteless", "same_model"]

_VARIANT = re.compile(r"[-_](it|instruct|chat|base|pt)$")
_QUANT = re.compile(r"[-_](q\d[-_a-z0-9]*|gguf|fp16|bf16|f16|f32)+$")


class SAEMismatchError(InterlayerError):
    """An SAE whose files name another site, width or model than the one it is loaded for."""


def canonical_site(name: str | None, n_layers: int | None = None) -> str | None:
    """``name`` in interlayer's site naming where it parses (a TransformerLens, Gemma Scope
    2 or sparsify name included), else as given."""
    if name is None:
        return None
    n = n_layers or 10**6
    try:
        return parse_site(name, n).name
    except InterlayerError:
        pass
    from interlayer import naming

    for convert in (naming.from_gemma_scope, naming.from_sparsify):
        try:
            return convert(name, n)
        except InterlayerError:
            continue
    return name


def _base_name(name: str) -> str:
    name = name.strip().rstrip("/").split("/")[-1].lower()
    return _QUANT.sub("", name)


def same_model(ours: str, theirs: str) -> str:
    """``"same"``, ``"variant"`` (one is the other's instruction-tuned or base variant) or ``"other"``."""
    a, b = _base_name(ours), _base_name(theirs)
    if a == b:
        return "same"
    if _VARIANT.sub("", a) == _VARIANT.sub("", b):
        return "variant"
    return "other"


def check_identity(sae: "SAE", model: "ModelAdapter | None", site: str | None, *,
                   allow_model_mismatch: bool = False) -> None:
    """Check ``sae`` against the site asked for and ``model`` (when given), filling in
    ``sae.cfg.site`` (canonical) and ``sae.cfg.model`` where the files said nothing.

    Raises:
        SAEMismatchError: the files name another site, the widths differ (both named), or the
            files name another model (unless ``allow_model_mismatch``).
    """
    cfg = sae.cfg
    n_layers = model.n_layers if model is not None else None
    written = canonical_site(cfg.site, n_layers)
    asked = _resolve(site, model) if site is not None else None
    if asked is not None and written is not None and asked != written:
        raw = (cfg.origin or {}).get("hook_name") or cfg.site
        raise SAEMismatchError(f"the SAE's files say it reads {written} (written {raw!r}), but it is loaded for "
                               f"{asked}; load the SAE of that site, or pass site={written!r}")
    refuse_siteless(sae, asked)
    cfg.site = asked or written
    if cfg.output_site is not None:
        cfg.output_site = canonical_site(cfg.output_site, n_layers)
    if model is None:
        return
    if cfg.site is not None:
        cfg.site = _resolve(cfg.site, model)
    for what, width in (("d_in", cfg.d_in), ("d_out", cfg.output_width)):
        if width != model.d_model:
            raise SAEMismatchError(f"the SAE's {what} is {width}, but {cfg.site or 'a site'} of {model.name} has width "
                                   f"{model.d_model}: it was made for another model")
    if cfg.model:
        relation = same_model(model.name, cfg.model)
        if relation == "other" and not allow_model_mismatch:
            raise SAEMismatchError(f"the SAE's files say it was trained on {cfg.model!r}, not {model.name!r}; load it "
                                   "with the model it was trained on (or pass allow_model_mismatch=True, "
                                   "--allow-model-mismatch, if the name differs but the weights are the same)")
        if relation == "variant":
            warnings.warn(f"the SAE was trained on {cfg.model!r}; it is used on {model.name!r}, a variant of it",
                          stacklevel=3)
    else:
        cfg.model = model.name


def refuse_siteless(sae: "SAE", site: str | None) -> None:
    """Refuse to put an SAE its reader found at no interlayer site (``origin['no_site']``
    says what it reads, e.g. Gemma Scope's attention SAEs before ``o_proj``) at ``site``.

    Raises:
        SAEMismatchError: such an SAE asked for at a site.
    """
    why = (sae.cfg.origin or {}).get("no_site")
    if site is not None and sae.cfg.site is None and why:
        raise SAEMismatchError(f"the SAE reads no interlayer site ({why}), so it cannot be used at {site}")


def _resolve(site: str, model: "ModelAdapter | None") -> str:
    if model is None:
        return canonical_site(site) or site
    try:
        return model.site(site).name
    except UnknownSiteError:
        canon = canonical_site(site, model.n_layers)
        return model.site(canon).name if canon != site else model.site(site).name
