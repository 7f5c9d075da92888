"""The model adapter: one type that every interlayer analysis takes.

:class:`ModelAdapter` wraps a Hugging Face causal LM (however it reached us: an
embedded alias, a checkpoint, or a user's HF / nnsight / TransformerLens object)
without copying weights. It exposes the decoder blocks, final norm and
unembedding, and read/write hooks at every hook site.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .architectures import ArchSpec, arch_spec, final_logit_softcap, get_blocks, get_submodule
from .padding import check_padding_side, pad_rows
from ..errors import LayerIndexError, UnknownSiteError, choices
from .passes import ForwardPasses, SiteFn, _first, _replace_first
from .placement import input_device, materialized_state
from .positions import PositionTracker
from .site_identity import SiteIdentity
from .sites import LN_FINAL, SITE_KINDS, Site, parse_site, wildcard_kind

__all__ = ["ModelAdapter", "PositionTracker", "SiteFn"]


@dataclass
class _Handle:
    handles: list[Any]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


class ModelAdapter(ForwardPasses):
    """A causal LM with named hook sites, final norm and unembedding.

    Attributes:
        model: the underlying Hugging Face ``PreTrainedModel`` (shared, not copied).
        tokenizer: its tokenizer, or ``None`` for token-only use.
        name: a human-readable model id (alias, path or hub id).
        spec: the :class:`~interlayer.model.architectures.ArchSpec` of its family.
        blocks: the decoder blocks (``nn.ModuleList``).
        final_norm: the model's own final norm (before the unembedding).
        embed: the model's own token embedding.
        unembed: the model's own unembedding (the LM head).
        logit_softcap: final-logit soft-cap ``c`` or ``None``.
        site_identity: what :func:`~interlayer.model.site_identity.check_site_identity`
            found when :func:`~interlayer.load_model` built this adapter (``None`` unchecked).
    """

    def __init__(self, model: nn.Module, tokenizer: Any = None, name: str | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.spec: ArchSpec = arch_spec(model)
        self.name = name or getattr(model.config, "_name_or_path", None) or type(model).__name__
        self.blocks: nn.ModuleList = get_blocks(model, self.spec)
        self.final_norm: nn.Module = get_submodule(model, self.spec.final_norm)
        self.embed: nn.Module = get_submodule(model, self.spec.embed)
        self.unembed: nn.Module = get_submodule(model, self.spec.unembed)
        self.logit_softcap: float | None = final_logit_softcap(model, self.spec)
        self.parallel_residual: bool = self.spec.parallel_residual(model.config)
        self.site_identity: SiteIdentity | None = None
        self._weights_sha256: str | None = None
        self._real_unembed: Callable[[torch.Tensor], torch.Tensor] | None = None

    # ------------------------------------------------------------------ shape
    @property
    def n_layers(self) -> int:
        """Number of decoder blocks."""
        return len(self.blocks)

    @property
    def d_model(self) -> int:
        """Width of the residual stream."""
        return int(self.unembed.weight.shape[1])

    @property
    def vocab_size(self) -> int:
        """Rows of the unembedding (may exceed the tokenizer's vocabulary)."""
        return int(self.unembed.weight.shape[0])

    @property
    def device(self) -> torch.device:
        """The device inputs go to: the token embedding's (for a model accelerate placed over
        several devices or offloaded, the device its embedding runs on; see
        :func:`~interlayer.model.placement.input_device`)."""
        return input_device(self.model, self.embed)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the model's weights (that of the unembedding), e.g. ``torch.float32``."""
        return self.unembed.weight.dtype

    @property
    def model_type(self) -> str:
        """The Hugging Face ``config.model_type`` (``"gemma3_text"``), its key in ``interlayer.ARCHITECTURES``."""
        return str(self.model.config.model_type)

    @property
    def bos_token_id(self) -> int | None:
        """The BOS id: the tokenizer's, else the model config's (``None`` if neither has one)."""
        for candidate in (getattr(self.tokenizer, "bos_token_id", None), getattr(self.model.config, "bos_token_id", None)):
            if candidate is not None:
                return int(candidate)
        return None

    @property
    def eos_token_id(self) -> int | None:
        """The tokenizer's EOS id (``None`` without a tokenizer or an EOS token)."""
        eos = getattr(self.tokenizer, "eos_token_id", None)
        return None if eos is None else int(eos)

    @property
    def pad_token_id(self) -> int:
        """The id padding is filled with: the tokenizer's pad, else its EOS, else the
        config's pad, else 0. Padding never reaches a result (it is masked), so any id does."""
        tok = self.tokenizer
        for candidate in (getattr(tok, "pad_token_id", None), getattr(tok, "eos_token_id", None),
                          getattr(self.model.config, "pad_token_id", None)):
            if candidate is not None:
                return int(candidate)
        return 0

    @property
    def max_positions(self) -> int:
        """The longest sequence the model takes (its config's ``max_position_embeddings``, else 2048)."""
        return int(getattr(self.model.config, "max_position_embeddings", None) or 2048)

    @property
    def last_hidden_state(self) -> str | None:
        """Whether the model's final ``hidden_states`` entry is after its final norm
        (``"post_norm"``: ``ln_final``) or before it (``"pre_norm"``: ``resid_post.{L-1}``),
        as the load-time site check found; ``None`` when the adapter was not checked."""
        return None if self.site_identity is None else self.site_identity.last_hidden_state

    @property
    def attn_implementation(self) -> str | None:
        """The attention implementation the model runs (its config's ``_attn_implementation``:
        ``"eager"``, ``"sdpa"``, ...; chosen with ``load_model(attn_implementation=...)``)."""
        return getattr(self.model.config, "_attn_implementation", None)

    def __repr__(self) -> str:
        return (
            f"ModelAdapter({self.name!r}, {type(self.model).__name__}, n_layers={self.n_layers}, "
            f"d_model={self.d_model}, vocab_size={self.vocab_size}, device={self.device}, dtype={self.dtype})"
        )

    def weights_sha256(self) -> str:
        """sha256 over every parameter's name, dtype, shape and bytes, in order.

        Identifies the exact weights an activation cache was made from (computed
        once per adapter; about a second per GiB on a CPU).
        """
        if self._weights_sha256 is None:
            import hashlib

            digest = hashlib.sha256()
            for name, param in materialized_state(self.model).items():  # offloaded weights read in
                digest.update(f"{name}:{param.dtype}:{tuple(param.shape)};".encode())
                tensor = param.detach().contiguous().cpu()
                if tensor.numel():  # the buffer itself: .tobytes() would copy the largest matrix (+1.1 GiB on Gemma-2-2B)
                    digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
            self._weights_sha256 = digest.hexdigest()
        return self._weights_sha256

    # ------------------------------------------------------------------ sites
    def site_kinds(self) -> tuple[str, ...]:
        """Site kinds this model has (no ``resid_mid`` on parallel-residual blocks)."""
        if self.parallel_residual:
            return tuple(k for k in SITE_KINDS if k != "resid_mid")
        return SITE_KINDS

    def sites(self, kinds: Iterable[str] | None = None) -> list[str]:
        """All hook-site names, in forward order, optionally of the given kinds."""
        wanted = tuple(kinds) if kinds is not None else self.site_kinds()
        for kind in wanted:
            self.site(Site(0, kind).name)  # validates the kind
        return [Site(layer, kind).name for layer in range(self.n_layers) for kind in self.site_kinds() if kind in wanted]

    def site(self, name: str | Site) -> Site:
        """Parse and validate a site name (short or TransformerLens form)."""
        site = parse_site(name, self.n_layers)
        if site.kind == "resid_mid" and self.parallel_residual:
            raise UnknownSiteError(
                f"{type(self.model).__name__} uses a parallel residual (attention and MLP both read "
                f"resid_pre), so it has no resid_mid; valid kinds here: {choices(self.site_kinds())}"
            )
        return site

    def expand_sites(self, sites: str | Site | Sequence[str | Site]) -> list[Site]:
        """Parse site names, expanding wildcards (``resid_post.*``, ``blocks.*.hook_mlp_out``),
        dropping duplicates, in forward order. Unknown names list the valid ones."""
        if isinstance(sites, (str, Site)):
            sites = [sites]
        out: dict[str, Site] = {}
        for name in sites:
            if isinstance(name, Site):
                site = self.site(name)
                out[site.name] = site
                continue
            kind = wildcard_kind(name)
            if kind is not None:
                if kind not in self.site_kinds():
                    raise UnknownSiteError(f"unknown site kind {kind!r} in {name!r}; valid kinds: {choices(self.site_kinds())}")
                for layer in range(self.n_layers):
                    site = Site(layer, kind)
                    out[site.name] = site
            else:
                site = self.site(name.strip())
                out[site.name] = site
        if not out:
            raise UnknownSiteError(f"no sites given; valid sites look like {choices(self.sites()[:5])}, ... or 'resid_post.*'")
        return sorted(out.values(), key=lambda s: s.order)

    def check_layer(self, layer: int) -> int:
        """Validate a layer index; raises :class:`LayerIndexError` naming the range."""
        if not isinstance(layer, int) or not 0 <= layer < self.n_layers:
            raise LayerIndexError(f"layer {layer!r} is out of range; valid layers are 0..{self.n_layers - 1}")
        return layer

    # ------------------------------------------------------------------ hooks
    def hook(self, site: str | Site, fn: SiteFn) -> _Handle:
        """Attach ``fn`` at ``site`` until the returned handle's ``remove()``.

        ``fn`` sees the activation ``[batch, seq, d_model]`` on every forward pass,
        including each step of generation with the KV cache. If it returns a tensor,
        that tensor replaces the activation and everything downstream sees it.
        """
        site = self.site(site)
        if site.kind == LN_FINAL:
            norm = get_submodule(self.model, self.spec.final_norm, unwrap=False)
            return _Handle([norm.register_forward_hook(_output_hook(fn))])
        block = self.blocks[site.layer]
        if site.kind == "resid_pre":
            return _Handle([block.register_forward_pre_hook(_input_hook(fn), with_kwargs=True)])
        if site.kind == "resid_post":
            return _Handle([block.register_forward_hook(_output_hook(fn))])
        if site.kind == "attn_out":
            module = get_submodule(block, self.spec.attn_out, unwrap=False)
            return _Handle([module.register_forward_hook(_output_hook(fn))])
        if site.kind == "mlp_out":
            module = get_submodule(block, self.spec.mlp_out, unwrap=False)
            return _Handle([module.register_forward_hook(_output_hook(fn))])
        if site.kind == "mlp_in":
            module = get_submodule(block, self.spec.mlp_in, unwrap=False)
            return _Handle([module.register_forward_pre_hook(_input_hook(fn), with_kwargs=True)])
        return self._hook_resid_mid(block, fn)

    def _hook_resid_mid(self, block: nn.Module, fn: SiteFn) -> _Handle:
        # resid_mid exists only as a local variable inside the block, so it is
        # rebuilt from its parts: resid_mid = resid_pre + attn_out, added in the same
        # order as the block adds them. A write goes through attn_out:
        # attn_out' = fn(resid_mid) - resid_pre. resid_pre is taken at the input of
        # the attention side, after any edit at resid_pre has been applied.
        resid_pre: dict[str, torch.Tensor] = {}

        def keep_pre(hidden: torch.Tensor) -> None:
            resid_pre["value"] = hidden

        def through_attn(attn_out: torch.Tensor) -> torch.Tensor | None:
            pre = resid_pre.pop("value")
            mid = pre + attn_out
            new = fn(mid)
            return None if new is None else new - pre

        attn_input = get_submodule(block, self.spec.attn_input, unwrap=False)
        pre_handle = attn_input.register_forward_pre_hook(_input_hook(keep_pre), with_kwargs=True)
        attn = get_submodule(block, self.spec.attn_out, unwrap=False)
        return _Handle([pre_handle, attn.register_forward_hook(_output_hook(through_attn))])

    @contextlib.contextmanager
    def hooks(self, fns: Mapping[str, SiteFn | Sequence[SiteFn]]) -> Iterator[None]:
        """Attach several hook functions for the duration of a ``with`` block.

        Functions at the same site run in the order given.
        """
        handles: list[_Handle] = []
        try:
            for site, fn in fns.items():
                for one in fn if isinstance(fn, (list, tuple)) else [fn]:
                    handles.append(self.hook(site, one))
            yield
        finally:
            for handle in handles:
                handle.remove()

    def track_positions(self) -> "PositionTracker":
        """Attach a :class:`PositionTracker`: during every forward call (generation steps
        with the KV cache included) it knows each token's position among the real tokens
        and each row's prompt length. ``remove()`` detaches it."""
        return PositionTracker(self)

    # ------------------------------------------------------------- unembedding
    def unembed_resid(self, resid: torch.Tensor) -> torch.Tensor:
        """Logits from residual-stream states: final norm, unembedding, soft-cap.

        This is exactly the model's own head, so ``unembed_resid(resid_post.{L-1})``
        equals the model's logits. Use :class:`interlayer.decoding.LayerDecoder`
        for memory-bounded decoding of many states.
        """
        return self.head(self.final_norm(resid.to(self.dtype)))

    def head_rows(self, resid: torch.Tensor) -> torch.Tensor:
        """:meth:`unembed_resid` of a few rows ``[n, d_model]`` against the whole vocabulary,
        computed as ``(W_U · xᵀ)ᵀ`` where the unembedding is a plain linear layer and there
        are 2-32 rows: on a CPU that is 1.6-1.8x faster than ``x · W_Uᵀ`` for 9-16 rows of
        Gemma's 262,144-token vocabulary (slower from about 64 rows on). The same values up
        to float summation order."""
        normed = self.final_norm(resid.to(self.dtype))
        module = self.unembed
        if type(module) is not nn.Linear or normed.dim() != 2 or not 2 <= normed.shape[0] <= 32:
            return self.head(normed)
        logits = (module.weight @ normed.t()).t()
        if module.bias is not None:
            logits = logits + module.bias
        if self.logit_softcap is not None:
            logits = torch.tanh(logits / self.logit_softcap) * self.logit_softcap
        return logits

    def head(self, normed: torch.Tensor) -> torch.Tensor:
        """Logits from final-norm outputs (``ln_final``): the unembedding, then the
        final-logit soft-cap ``c · tanh(z / c)`` where the family has one."""
        unembed = self._real_unembed or self.unembed  # the real one, also inside skip_head()
        logits = unembed(normed.to(self.dtype))
        if self.logit_softcap is not None:
            logits = torch.tanh(logits / self.logit_softcap) * self.logit_softcap
        return logits

    # -------------------------------------------------------------- tokenizing
    def tokenize(self, texts: str | Sequence[str], padding_side: str = "right") -> dict[str, torch.Tensor]:
        """Tokenize text with the model's tokenizer (BOS added where the model uses one)."""
        if self.tokenizer is None:
            raise ValueError(f"{self.name} has no tokenizer; pass token ids, or load it with tokenizer=...")
        batch = [texts] if isinstance(texts, str) else list(texts)
        check_padding_side(padding_side)
        # Padded here rather than by the tokenizer, so the user's tokenizer is never
        # changed (it may have no pad token, and its padding side is its own).
        encoded = [list(ids) for ids in self.tokenizer(batch).input_ids]
        input_ids, mask = pad_rows(encoded, self.pad_token_id, padding_side)
        return {"input_ids": input_ids, "attention_mask": mask}

    def token_strings(self, ids: Iterable[int]) -> list[str]:
        """Readable strings for token ids (decoded one at a time)."""
        if self.tokenizer is None:
            return [f"<{int(i)}>" for i in ids]
        return [self.tokenizer.decode([int(i)]) for i in ids]


def _input_hook(fn: SiteFn) -> Callable[..., Any]:
    def hook(module: nn.Module, args: tuple, kwargs: dict) -> Any:
        if args:
            new = fn(args[0])
            if new is not None:
                return (new, *args[1:]), kwargs
        else:
            new = fn(kwargs["hidden_states"])
            if new is not None:
                return args, {**kwargs, "hidden_states": new}
        return None

    return hook


def _output_hook(fn: SiteFn) -> Callable[..., Any]:
    def hook(module: nn.Module, args: Any, output: Any) -> Any:
        new = fn(_first(output))
        return None if new is None else _replace_first(output, new)

    return hook
