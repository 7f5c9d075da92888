"""The sparse autoencoder: one module, with a pluggable activation.

``pre = (x_n - b_dec) W_enc + b_enc`` (no ``b_enc`` in top-AFA's authors-exact mode), ``f = act(pre)``, ``x_hat_n = f W_dec + b_dec``,
where ``x_n`` is the normalised input (:mod:`interlayer.saes.normalization`).
Tensor names and shapes follow SAELens: ``W_enc [d_in, d_sae]``,
``W_dec [d_sae, d_in]``, ``b_enc [d_sae]``, ``b_dec [d_in]``. Decoder rows are kept
at unit norm while training (:meth:`SAE.constrain_decoder`).

Saved as ``sae.safetensors`` plus ``cfg.json`` (:meth:`SAE.save`, :meth:`SAE.load`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional as F

from interlayer.errors import InterlayerError, choices
from interlayer.io.files import write_json_atomic, write_safetensors_atomic

from .archs import REGISTRY, ArchFields, Code, EncodeContext, architecture
from .archs.jumprelu import BANDWIDTH, INITIAL_THRESHOLD
from .formats import CONFIG, FORMAT, WEIGHTS, is_interlayer_dir, is_saelens_dir, read_config
from .normalization import check_normalization, denormalize, normalize


@dataclass
class SAEConfig:
    """The architecture of an SAE: everything needed to rebuild it before loading weights."""

    d_in: int
    """Width of the activations (the site's ``d_model``)."""
    d_sae: int
    """Number of latents ``h``."""
    arch: str = "topk"
    """relu, topk, batchtopk, jumprelu or topafa."""
    k: int | None = None
    """Latents per token for topk, and the mean per token for batchtopk."""
    normalization: str = "standardize"
    """Input normalisation: none, standardize or mean_norm."""
    scale: float = 1.0
    """The mean_norm scale ``c`` (inputs are multiplied by it)."""
    afa_form: str | None = None
    """top-AFA only: the AFA loss's target, ``centred`` (``||f|| -> ||x - b_dec||``, the
    quantity the selection targets; b_dec starts at the data mean; the default) or
    ``authors`` (``||f|| -> ||x||``, b_dec from zeros, as Lee et al.'s code)."""
    authors_exact: bool = False
    """top-AFA only: the authors' code exactly (implies ``afa_form='authors'``): no
    ``b_enc`` in the encoder, ``k = h`` excluded from the selection (their ``1e8``
    sentinel), their full sort and dense decode (bit for bit their numbers, slower than the
    fast selection), and their trainer (see :mod:`interlayer.saes.training`)."""
    jumprelu_init_threshold: float = INITIAL_THRESHOLD
    """Initial JumpReLU threshold theta (in the normalised space; the one the SAE trained from,
    ``--jumprelu-threshold``)."""
    jumprelu_bandwidth: float = BANDWIDTH
    """Width of the JumpReLU straight-through rectangle kernel."""
    model: str | None = None
    """The model the SAE was trained on (checked on load by :func:`interlayer.saes.load`)."""
    site: str | None = None
    """The hook site it reads, e.g. resid_post.6 (checked on load)."""
    output_site: str | None = None
    """A transcoder's output site (e.g. ``mlp_out.6`` for input ``resid_mid.6``): the SAE
    predicts this site's activation from ``site``'s. ``None``: an autoencoder."""
    d_out: int | None = None
    """Width of the output (a transcoder's output site); ``None``: ``d_in``."""
    apply_b_dec_to_input: bool = True
    """Subtract ``b_dec`` from the input before encoding (SAELens's name). Transcoders,
    Gemma Scope and Llama Scope encode the raw input: ``False``."""
    skip: str | None = None
    """A skip connection added to the output: ``linear`` (``x W_skip``) or ``affine``
    (``x W_skip + b_skip``), on the raw input; ``None``: none."""
    origin: dict[str, Any] | None = None
    """Where a loaded SAE came from: its format, file, the hook names as its files wrote
    them, its dtype (filled by :func:`interlayer.saes.load`; kept when re-saved)."""

    def __post_init__(self) -> None:
        if self.d_in < 1 or self.d_sae < 1:
            raise InterlayerError(f"d_in and d_sae must be positive, got d_in={self.d_in}, d_sae={self.d_sae}")
        self.afa_form = check_sae_fields(ArchFields(self.arch, self.d_sae, self.k, self.afa_form, self.authors_exact,
                                                    self.jumprelu_init_threshold, self.jumprelu_bandwidth),
                                         self.normalization).afa_form
        if not self.scale > 0:
            raise InterlayerError(f"scale must be positive, got {self.scale}")
        check_output_fields(self)

    @property
    def output_width(self) -> int:
        """Width of the reconstruction: ``d_out``, else ``d_in``."""
        return self.d_out if self.d_out is not None else self.d_in

    @property
    def transcoder(self) -> bool:
        """Whether the SAE predicts another site (or another width) than it reads."""
        return (self.output_site is not None and self.output_site != self.site) or self.output_width != self.d_in

    @property
    def mode(self) -> str:
        """``authors-exact`` for a top-AFA SAE in the authors' exact mode, else ``interlayer``."""
        return "authors-exact" if self.authors_exact else "interlayer"

    def to_dict(self) -> dict[str, Any]:
        """Every field as a plain dict (the ``cfg`` of a saved SAE's JSON); ``from_dict`` reads it back."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SAEConfig":
        """The config of a dict written by ``to_dict``; a top-AFA config saved before ``afa_form``
        existed reads as ``afa_form="authors"``.

        Raises:
            InterlayerError: ``data`` has a field this config does not know, or a value it refuses.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise InterlayerError(f"unknown SAE config field(s) {choices(unknown)}; valid fields: {choices(sorted(names))}")
        if data.get("arch") == "topafa" and "afa_form" not in data:
            data = {**data, "afa_form": "authors"}  # saved before the centred form existed: the authors' loss
        return cls(**data)


def check_sae_fields(fields: ArchFields, normalization: str = "standardize") -> ArchFields:
    """Check an SAE's architecture fields as :class:`SAEConfig` does (with ``d_sae=None``
    any width: options are checked before the model that sets it loads) and return them
    completed (top-AFA's default AFA form)."""
    spec = architecture(fields.arch)  # an unknown name is refused, naming the registered ones
    if spec.takes_k:
        if fields.k is None:
            raise InterlayerError(f"architecture {fields.arch!r} needs k (latents per token), e.g. --k {spec.default_k}")
        if fields.k < 1 or (fields.d_sae is not None and fields.k > fields.d_sae):
            raise InterlayerError(f"k must be between 1 and d_sae={fields.d_sae or 'the number of latents'}, "
                                  f"got {fields.k}")
    elif fields.k is not None:
        fixed = [n for n, a in REGISTRY.items() if a.takes_k]
        raise InterlayerError(f"architecture {fields.arch!r} takes no k (got k={fields.k}); only "
                              f"{' and '.join(repr(n) for n in fixed)} have a fixed k")
    spec.check(fields)
    check_normalization(normalization)
    if not fields.jumprelu_init_threshold > 0:
        raise InterlayerError(f"jumprelu_init_threshold must be positive, got {fields.jumprelu_init_threshold}")
    return fields


SKIPS = ("linear", "affine")
"""The skip connections an SAE (a transcoder, usually) may carry."""


def check_output_fields(cfg: "SAEConfig") -> None:
    """Check a config's transcoder fields: the skip's name, the output width, and that an
    SAE whose output is not its input neither centres its input on ``b_dec`` nor
    normalises with per-token statistics (neither means anything across two sites)."""
    if cfg.skip is not None and cfg.skip not in SKIPS:
        raise InterlayerError(f"unknown skip connection {cfg.skip!r}; valid choices: {choices(list(SKIPS))} or None")
    if cfg.d_out is not None and (isinstance(cfg.d_out, bool) or cfg.d_out < 1):
        raise InterlayerError(f"d_out must be a positive width, got {cfg.d_out!r}")
    if cfg.transcoder and cfg.apply_b_dec_to_input and cfg.output_width != cfg.d_in:
        raise InterlayerError(f"a transcoder from width {cfg.d_in} to {cfg.output_width} cannot subtract b_dec "
                              "(the output bias) from its input: set apply_b_dec_to_input=False")
    if cfg.transcoder and cfg.normalization == "standardize":
        raise InterlayerError("a transcoder cannot use normalization 'standardize' (the output would be rescaled by "
                              "the input's statistics); valid choices for a transcoder: 'none', 'mean_norm'")


class SAEOutput(NamedTuple):
    """One forward pass of an :class:`SAE`."""

    x_hat: torch.Tensor
    """Reconstruction in the activations' own space."""
    f: torch.Tensor
    """``[..., d_sae]`` sparse code."""
    pre: torch.Tensor
    """``[..., d_sae]`` encoder pre-activations."""
    x_in: torch.Tensor
    """The normalised input the SAE saw."""
    x_hat_in: torch.Tensor
    """The reconstruction in the normalised space."""


class SAE(nn.Module):
    """A sparse autoencoder with SAELens tensor names; see the module docstring."""

    def __init__(self, cfg: SAEConfig, seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        gen = torch.Generator().manual_seed(seed)
        # Kaiming-uniform encoder, decoder its transpose at unit row norm (as the top-AFA authors).
        bound = (6.0 / cfg.d_sae) ** 0.5  # fan_in of a [d_in, d_sae] tensor in torch's convention is d_sae
        w_enc = (torch.rand(cfg.d_in, cfg.d_sae, generator=gen) * 2 - 1) * bound
        self.W_enc = nn.Parameter(w_enc)
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        # row-major, so the sparse decode gathers contiguous rows (the transpose's strides made it 50x slower)
        w_dec = w_enc.t() / w_enc.t().norm(dim=-1, keepdim=True)
        if cfg.output_width != cfg.d_in:  # a transcoder to another width: rows of its own
            w_dec = torch.rand(cfg.d_sae, cfg.output_width, generator=gen) - 0.5
            w_dec = w_dec / w_dec.norm(dim=-1, keepdim=True)
        self.W_dec = nn.Parameter(w_dec.contiguous())
        self.b_dec = nn.Parameter(torch.zeros(cfg.output_width))
        if cfg.skip is not None:
            self.W_skip = nn.Parameter(torch.zeros(cfg.d_in, cfg.output_width))
        if cfg.skip == "affine":
            self.b_skip = nn.Parameter(torch.zeros(cfg.output_width))
        self.activation = architecture(cfg.arch).activation(cfg)

    @classmethod
    def empty(cls, cfg: SAEConfig) -> "SAE":
        """An SAE of ``cfg`` whose tensors are not yet allocated (on the meta device), for
        :meth:`load_tensors` to fill: loading a file then takes its own tensors' memory
        once, not a random initialisation's beside them."""
        with torch.device("meta"):
            return cls(cfg)

    @property
    def d_in(self) -> int:
        """Width of the activations the SAE reads (``cfg.d_in``: the site's ``d_model``)."""
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        """Number of latents (``cfg.d_sae``)."""
        return self.cfg.d_sae

    @property
    def device(self) -> torch.device:
        """The device of the SAE's weights."""
        return self.W_enc.device

    def __repr__(self) -> str:
        k = f", k={self.cfg.k}" if self.cfg.k is not None else ""
        afa = f", afa_form={self.cfg.afa_form!r}" if self.cfg.afa_form else ""
        exact = ", authors_exact=True" if self.cfg.authors_exact else ""
        return (f"SAE(arch={self.cfg.arch!r}, d_in={self.d_in}, d_sae={self.d_sae}{k}{afa}{exact}, "
                f"normalization={self.cfg.normalization!r})")

    # ---------------------------------------------------------------- forward
    def check_input(self, x: torch.Tensor) -> None:
        """Check that ``x`` is ``[..., d_in]``.

        Raises:
            InterlayerError: the last dimension of ``x`` is not ``d_in`` (naming the site the SAE was trained on).
        """
        if x.shape[-1] != self.d_in:
            raise InterlayerError(f"the SAE reads activations of width d_in={self.d_in}, got width {x.shape[-1]} "
                                  f"(shape {tuple(x.shape)}); is this the site it was trained on"
                                  f"{' (' + self.cfg.site + ')' if self.cfg.site else ''}?")

    def forward(self, x: torch.Tensor) -> SAEOutput:
        """Encode and decode ``x`` (``[..., d_in]``, any dtype; computed in the SAE's dtype)."""
        self.check_input(x)
        x_in, stats = normalize(x.to(self.W_enc.dtype), self.cfg.normalization, self.cfg.scale)
        centred = x_in - self.b_dec if self.cfg.apply_b_dec_to_input else x_in
        pre = centred @ self.W_enc
        if not self.cfg.authors_exact:  # the authors' top-AFA encoder has no b_enc
            pre = pre + self.b_enc
        code = self.activation.encode(pre.reshape(-1, self.d_sae), EncodeContext(centred, self.W_dec.norm(dim=-1)))
        f = code.f.reshape(pre.shape)
        x_hat_in = self.decode(code).reshape(*centred.shape[:-1], self.cfg.output_width)
        x_hat = denormalize(x_hat_in, self.cfg.normalization, self.cfg.scale, stats)
        if self.cfg.skip is not None:
            x_hat = x_hat + self.skip_term(x.to(self.W_enc.dtype))
        return SAEOutput(x_hat, f, pre, x_in, x_hat_in)

    def skip_term(self, x: torch.Tensor) -> torch.Tensor:
        """The skip connection's part of the output: ``x W_skip`` (+ ``b_skip``), on the raw input."""
        out = x @ self.W_skip
        return out + self.b_skip if self.cfg.skip == "affine" else out

    def decode(self, code: Code) -> torch.Tensor:
        """``f W_dec + b_dec`` in the normalised space; for a code with known nonzero entries
        (TopK, BatchTopK while training, top-AFA) as a sum of the chosen decoder rows
        (``embedding_bag``), which skips the zeros of ``f`` forward and backward."""
        if code.sparse:
            return F.embedding_bag(code.cols, self.W_dec, code.offsets, mode="sum",
                                   per_sample_weights=code.values) + self.b_dec
        return code.f @ self.W_dec + self.b_dec

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The sparse code ``f`` of ``x``."""
        return self.forward(x).f

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """``x_hat`` in the activations' space."""
        return self.forward(x).x_hat.to(x.dtype)

    # --------------------------------------------------------------- training
    @torch.no_grad()
    def constrain_decoder(self, grad_only: bool = False) -> None:
        """Remove the component of ``W_dec``'s gradient parallel to each row (before the
        step), or renormalise the rows to unit norm (after it)."""
        rows = self.W_dec / self.W_dec.norm(dim=-1, keepdim=True)
        if grad_only:
            if self.W_dec.grad is not None:
                self.W_dec.grad -= (self.W_dec.grad * rows).sum(-1, keepdim=True) * rows
        else:
            self.W_dec.copy_(rows)

    # ---------------------------------------------------------------- storage
    def save(self, out: str | Path) -> Path:
        """Write ``sae.safetensors`` and ``cfg.json`` to ``out`` (atomically)."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().float().cpu().contiguous() for k, v in self.state_dict().items()}
        write_safetensors_atomic(out / WEIGHTS, tensors, metadata={"format": str(FORMAT)})
        write_json_atomic(out / CONFIG, {"format": FORMAT, **self.cfg.to_dict()})
        return out

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device | None = None) -> "SAE":
        """Load an SAE saved by :meth:`save` (a directory with ``cfg.json`` and ``sae.safetensors``)."""
        path = Path(path)
        if not is_interlayer_dir(path):
            if is_saelens_dir(path):
                raise InterlayerError(f"{path} holds an SAE in the SAELens format; load it with "
                                      "interlayer.saes.from_saelens()")
            raise InterlayerError(f"{path} is not a saved SAE: it needs {CONFIG} and {WEIGHTS}")
        data = read_config(path)  # a one-line error for invalid JSON, another format (sparsify) or bad types
        data.pop("format", None)
        try:
            sae = cls.empty(SAEConfig.from_dict(data))
        except TypeError as err:  # a required field missing
            raise InterlayerError(f"{path / CONFIG}: {err}") from None
        tensors = load_file(str(path / WEIGHTS))
        sae.load_tensors(tensors, str(path / WEIGHTS))
        return sae.to(device) if device is not None else sae

    def load_tensors(self, tensors: dict[str, torch.Tensor], source: str) -> None:
        """Load a state dict, naming ``source`` and the differences when it does not fit."""
        current = self.state_dict()
        expected = {k: tuple(v.shape) for k, v in current.items()}
        got = {k: tuple(v.shape) for k, v in tensors.items()}
        if expected != got:
            missing = sorted(set(expected) - set(got))
            extra = sorted(set(got) - set(expected))
            shapes = [f"{k}: {got[k]} vs {expected[k]}" for k in expected if k in got and got[k] != expected[k]]
            raise InterlayerError(f"{source} does not fit a {self!r}: missing {missing}, unexpected {extra}, "
                                  f"shape mismatches {shapes}")
        assign = any(t.is_meta for t in current.values())  # an SAE.empty: take the tensors as they are
        if assign:
            tensors = {k: v.to(current[k].dtype).contiguous() for k, v in tensors.items()}
        self.load_state_dict(tensors, assign=assign)
