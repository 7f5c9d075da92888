"""The pieces of a report: profiles (how much work each section does), the context
sections share (the model and the shared store passes), and a section's result."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio

from interlayer.model.adapter import ModelAdapter
from interlayer.decoding import LOGIT_LENS, Lens
from interlayer.errors import InterlayerError, choices

from .summary import Panel
from .user_data import load_prompts, load_word_pairs


@dataclass(frozen=True)
class Profile:
    """How much data each section reads. ``quick`` fits a few minutes on a 2-core CPU;
    ``full`` uses the sizes of the README findings."""

    name: str
    prompts: int                  # logit-lens example prompts
    sample_tokens: int            # sample-text tokens (saturation, logit-lens curves)
    latent_words: int | None      # words per latent-language pair (None: all)
    mexa_languages: int           # languages besides the English pivot
    mexa_sentences: int           # FLORES sentences per language (MEXA and the language-ID probe)
    probe_folds: int
    iks_questions: int
    iks_steps: int
    consistency_questions: int
    consistency_paths: int
    consistency_tokens: int
    steering_pairs: int           # contrast pairs to train the vector
    steering_items: int           # held-out items per sweep cell
    sae_tokens: int
    trace_facts: int = 4          # known facts causal tracing averages over
    trace_scan: int = 100         # known_1000 facts read to find them
    trace_samples: int = 10       # noise samples per fact (ROME: 10)
    trace_positions: str = "all"  # positions restored: all (ROME) or key (first/last subject token, last token)


PROFILES: dict[str, Profile] = {
    "quick": Profile("quick", prompts=3, sample_tokens=192, latent_words=24, mexa_languages=20, mexa_sentences=20,
                     probe_folds=2, iks_questions=8, iks_steps=4, consistency_questions=4, consistency_paths=3,
                     consistency_tokens=32, steering_pairs=32, steering_items=16, sae_tokens=1024,
                     trace_facts=2, trace_scan=100, trace_samples=3, trace_positions="key"),
    # the sizes of the README findings
    "full": Profile("full", prompts=3, sample_tokens=2048, latent_words=None, mexa_languages=33, mexa_sentences=100,
                    probe_folds=5, iks_questions=40, iks_steps=8, consistency_questions=20, consistency_paths=5,
                    consistency_tokens=96, steering_pairs=200, steering_items=100, sae_tokens=8192,
                    trace_facts=20, trace_scan=1209, trace_samples=10, trace_positions="key"),
}
"""The sizes of a report run by ``--profile`` name: ``quick`` (minutes on a CPU) and ``full`` (the
sizes of the published findings).
"""


def check_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise InterlayerError(f"unknown profile {name!r}; valid choices: {choices(PROFILES)}")
    return PROFILES[name]


@dataclass
class SectionResult:
    """What a section shows: every number (``numbers``, all of them JSON), sentences
    written from them, figures, tables (also written as CSV), and its panels of the
    cross-layer summary (:class:`~interlayer.report.summary.Panel`: a per-layer quantity in
    its own units, its interval and its layer of interest)."""

    numbers: dict[str, Any] = field(default_factory=dict)
    prose: list[str] = field(default_factory=list)
    figures: list[go.Figure] = field(default_factory=list)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    panels: list[Panel] = field(default_factory=list)
    status: str = "ok"
    error: str = ""
    seconds: float = 0.0
    forward_calls: int = 0
    """Model forward calls the section made (a generation step is one call)."""

    def to_json(self) -> dict[str, Any]:
        """Everything, figures as plotly JSON and tables as records (for the resume files)."""
        return {"numbers": self.numbers, "prose": self.prose,
                "figures": [json.loads(pio.to_json(f, validate=False)) for f in self.figures],
                "tables": {k: json.loads(v.to_json(orient="split", index=False)) for k, v in self.tables.items()},
                "panels": [p.to_json() for p in self.panels],
                "status": self.status, "error": self.error, "seconds": self.seconds,
                "forward_calls": self.forward_calls}

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> "SectionResult":
        """The section result ``to_json`` wrote (a resume file): tables, figures and panels rebuilt."""
        tables = {k: pd.DataFrame(v["data"], columns=v["columns"]) for k, v in payload["tables"].items()}
        figures = [pio.from_json(json.dumps(f), skip_invalid=True) for f in payload["figures"]]
        panels = [Panel.from_json(p) for p in payload["panels"]]
        return cls(payload["numbers"], payload["prose"], figures, tables, panels, payload["status"], payload["error"],
                   payload["seconds"], payload.get("forward_calls", 0))


SHARED_USERS: dict[str, tuple[str, ...]] = {"sample": ("logit_lens", "saturation"), "flores": ("mexa", "probes")}
"""The sections that use each shared pass (a pass not listed is kept to the end)."""


class ReportContext:
    """What every section gets: the model, the profile, the lens, and the shared store
    passes (each computed once, on first use, and kept for the other sections)."""

    def __init__(self, model: ModelAdapter, profile: Profile, *, lens: Lens = LOGIT_LENS, sae_dir: str | None = None,
                 progress: bool = False, facts: Any = None, prompts: Any = None, word_pairs: Any = None,
                 text: Any = None, steering_dataset: str | None = None, qa_data: str | None = None) -> None:
        self.model = model
        self.facts = facts  # causal tracing's facts file (None: the packaged known_1000)
        self.prompts_file = prompts  # the logit lens's (prompt, target) file (None: the packaged examples)
        self.prompts: list[tuple[str, str]] | None = None if prompts is None else load_prompts(prompts)
        self.word_pairs_file = word_pairs  # latent language's words (None: the packaged list)
        self.word_pairs = None if word_pairs is None else load_word_pairs(word_pairs)
        self.text = text  # the sample text (None: the packaged one)
        self.steering_dataset = steering_dataset
        self.qa_data = qa_data
        self.profile = profile
        self.lens = lens
        self.sae_dir = sae_dir
        self.progress = progress
        self._shared: dict[str, Any] = {}

    def sample_text(self) -> tuple[str, str]:
        """The sample text's path and how the report names it (``--text`` or the packaged one)."""
        from interlayer.model.loading import SAMPLE_TEXT

        if self.text is None:
            return str(SAMPLE_TEXT), "packaged sample text"
        return str(self.text), f"the text of {self.text}"

    def shared(self, name: str, compute: Callable[[], Any]) -> Any:
        """The shared pass ``name``, computed by ``compute`` the first time it is asked for."""
        if name not in self._shared:
            self._shared[name] = compute()
        return self._shared[name]

    def release(self, remaining: Sequence[str]) -> list[str]:
        """Drop the shared passes no section in ``remaining`` uses (:data:`SHARED_USERS`;
        the FLORES embeddings of every layer are 0.2 GiB at Gemma-2-2B's width), so later
        sections do not run on top of them; returns the names dropped."""
        dropped = [n for n in self._shared if not set(SHARED_USERS.get(n, remaining)) & set(remaining)]
        for name in dropped:
            del self._shared[name]
        return dropped

    def depth(self, layer: int | None, of: int | None = None) -> float:
        """Relative depth of block ``layer``: the fraction of blocks applied, ``(layer + 1) / L``
        (``None``, the embeddings, at 0; the last block at 1), one axis for every method
        (:func:`interlayer.layers.relative_depth`)."""
        from interlayer.layers import relative_depth

        return relative_depth(layer, of if of is not None else self.model.n_layers)


@dataclass(frozen=True)
class Section:
    """A report section: a name (for ``--only``/``--skip``), a title, and what it runs."""

    name: str
    title: str
    run: Callable[[ReportContext], SectionResult]
    needs_sae: bool = False


def settings_of(profile: Profile) -> dict[str, Any]:
    return dataclasses.asdict(profile)


def finite(value: float) -> float | None:
    """A JSON-safe float (NaN and infinities become None)."""
    value = float(value)
    return value if math.isfinite(value) else None
