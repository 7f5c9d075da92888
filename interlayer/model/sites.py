"""Hook-site names: ``resid_pre.6`` and friends, with TransformerLens aliases."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import InterlayerError, LayerIndexError, UnknownSiteError, choices

SITE_KINDS: tuple[str, ...] = ("resid_pre", "attn_out", "resid_mid", "mlp_in", "mlp_out", "resid_post")
"""Site kinds in the order a block computes them. ``mlp_in`` is the MLP module's input,
after its pre-norm where the block has one (TransformerLens ``blocks.l.ln2.hook_normalized``)."""

_TL_MLP_IN = re.compile(r"^blocks\.(?P<layer>-?\d+)\.ln2\.hook_normalized$")

LN_FINAL = "ln_final"
"""The output of the final norm (TransformerLens ``ln_final.hook_normalized``): the last
hidden state as Hugging Face's ``output_hidden_states`` reports it."""
_LN_FINAL_ALIASES = ("ln_final", "ln_final.hook_normalized")

_SHORT = re.compile(r"^(?P<kind>[a-z_]+)\.(?P<layer>-?\d+)$")
_TRANSFORMER_LENS = re.compile(r"^blocks\.(?P<layer>-?\d+)\.hook_(?P<kind>[a-z_]+)$")


@dataclass(frozen=True, order=True)
class Site:
    """One hook site: a kind (see :data:`SITE_KINDS`) at a decoder layer."""

    layer: int
    kind: str

    @property
    def name(self) -> str:
        """Canonical short name, e.g. ``resid_post.6`` (or ``ln_final``)."""
        return LN_FINAL if self.kind == LN_FINAL else f"{self.kind}.{self.layer}"

    @property
    def transformer_lens_name(self) -> str:
        """The TransformerLens name, e.g. ``blocks.6.hook_resid_post``."""
        if self.kind == LN_FINAL:
            return "ln_final.hook_normalized"
        if self.kind == "mlp_in":
            return f"blocks.{self.layer}.ln2.hook_normalized"
        return f"blocks.{self.layer}.hook_{self.kind}"

    @property
    def order(self) -> tuple[int, int]:
        """Position in a forward pass: earlier sites sort first (``ln_final`` last)."""
        return (self.layer, 0 if self.kind == LN_FINAL else SITE_KINDS.index(self.kind))

    def __str__(self) -> str:
        return self.name


def parse_site(name: str | Site, n_layers: int) -> Site:
    """Parse ``resid_post.6`` or ``blocks.6.hook_resid_post`` into a :class:`Site`.

    Raises :class:`UnknownSiteError` for a malformed name or unknown kind, and
    :class:`LayerIndexError` naming the valid range for a layer out of range.
    """
    if isinstance(name, Site):
        kind, layer = name.kind, name.layer
        if kind == LN_FINAL:
            return Site(layer=n_layers, kind=LN_FINAL)
    else:
        text = str(name).strip()
        if text in _LN_FINAL_ALIASES:
            return Site(layer=n_layers, kind=LN_FINAL)
        match = _match(text)
        if match is None:
            raise UnknownSiteError(
                f"unknown hook site {name!r}; expected '<kind>.<layer>' or "
                f"'blocks.<layer>.hook_<kind>' with kind one of {choices(SITE_KINDS)} "
                f"and layer in 0..{n_layers - 1}, or 'ln_final'"
            )
        kind, layer = match["kind"], int(match["layer"])
    if kind not in SITE_KINDS:
        raise UnknownSiteError(f"unknown site kind {kind!r} in {name!r}; valid kinds: {choices(SITE_KINDS)}")
    if not 0 <= layer < n_layers:
        raise LayerIndexError(f"layer {layer} in site {name!r} is out of range; valid layers are 0..{n_layers - 1}")
    return Site(layer=layer, kind=kind)


def _match(text: str) -> dict[str, str] | None:
    """``{"kind", "layer"}`` of a short or TransformerLens name, else ``None``."""
    if _TRANSFORMER_LENS.match(text) and text.endswith(".hook_mlp_in"):
        raise UnknownSiteError(f"{text!r} is TransformerLens's MLP input before ln2, which is resid_mid; "
                               "interlayer's mlp_in is after the norm, blocks.<l>.ln2.hook_normalized")
    tl_mlp_in = _TL_MLP_IN.match(text)
    if tl_mlp_in is not None:
        return {"kind": "mlp_in", "layer": tl_mlp_in.group("layer")}
    match = _SHORT.match(text) or _TRANSFORMER_LENS.match(text)
    return None if match is None else match.groupdict()


def wildcard_kind(name: str) -> str | None:
    """The site kind of a wildcard (``resid_post.*`` or ``blocks.*.hook_resid_post``), else ``None``."""
    text = name.strip()
    if text.endswith(".*"):
        return text[:-2]
    if text.startswith("blocks.*.hook_"):
        return text[len("blocks.*.hook_"):]
    if text == "blocks.*.ln2.hook_normalized":
        return "mlp_in"
    return None


def check_site_syntax(names: str | list[str]) -> list[str]:
    """Check site names without a model (before one is loaded): each must be a wildcard
    or parse with a known kind. Layer ranges are checked once the model is known."""
    items = [s.strip() for s in (names.split(",") if isinstance(names, str) else names) if s.strip()]
    if not items:
        raise UnknownSiteError("no sites given; e.g. 'resid_post.6', 'blocks.6.hook_mlp_out' or 'resid_post.*'")
    for name in items:
        kind = wildcard_kind(name)
        if kind is None:
            if name in _LN_FINAL_ALIASES:
                continue
            match = _match(name)
            if match is None:
                parse_site(name, 1 << 30)  # raises, naming the expected forms
            kind = match["kind"]
        if kind not in SITE_KINDS:
            raise UnknownSiteError(f"unknown site kind {kind!r} in {name!r}; valid kinds: {choices(SITE_KINDS)}")
    return items


# Option parsers (``option(parse=...)``) for site flags.
def one_site(text: str) -> str:
    """One full site such as ``resid_post.6`` (no list, no wildcard)."""
    name = str(text).strip()
    if "," in name or wildcard_kind(name) is not None:
        raise InterlayerError(f"{text!r} is not one site: give a full site such as resid_post.6 "
                              "(lists and wildcards go to --sites)")
    check_site_syntax([name])
    return name


def site_list(text: str) -> list[str]:
    """Comma-separated sites, wildcards allowed (``resid_post.*,mlp_out.6``)."""
    return check_site_syntax(str(text))
