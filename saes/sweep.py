"""Pareto sweeps: a grid of SAEs trained on the same cached activations, compared the
way the field compares them (L0 against explained variance, NMSE and CE loss recovered,
one line per architecture, plus the top-AFA authors' standardised per-element MSE).

The grid is a list of :class:`GridMember`, one SAE each: ``k`` for TopK and
BatchTopK, the L1 coefficient for ReLU, the L0 coefficient for JumpReLU, and λ (the AFA
loss coefficient) for top-AFA in the ``centred`` or ``authors`` form, or the
authors-exact mode. As text (``--grid``)::

    topk=16,32,64,128;batchtopk=32;jumprelu=0.001,0.003;relu=0.001,0.003;topafa=authors:1/32,centred:1/64

(a value may be a fraction; a top-AFA value without a form is ``centred``; ``exact:`` is
the authors-exact mode). :data:`DEFAULT_GRID` holds the documented default.

:func:`run_sweep` trains the members not yet finished in one pass over the cached
activations per group (every member of a group takes its step on each batch as it is
read, :func:`~interlayer.saes.training.train_saes`), evaluates them together on
held-out text (:func:`~interlayer.saes.evaluation.evaluate_saes`: one clean pass, one
zero-ablated pass and one spliced pass per member), and writes ``<out>/<member>/`` (the
SAE, ``history.csv`` and ``metrics.json``), ``<out>/pareto.csv`` and
``<out>/pareto.html``. A finished member is reused, never retrained or overwritten; a
member interrupted mid-training resumes from its checkpoint; a member directory
written for another config is an error, before any training.
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from interlayer.errors import InterlayerError, choices
from interlayer.io.checkpointing import identity_differences
from interlayer.io.files import write_json_atomic
from interlayer.results import Result, decode_frame, encode_frame, require

from .archs import SAE_ARCHITECTURES
from .archs.jumprelu import INITIAL_THRESHOLD
from .config import LATENTS_PER_D_MODEL
from .records import describe, metrics_record, train_options, write_figures
from .sae import SAE, SAEConfig
from .training import CHECKPOINT, TrainMember, TrainOptions, TrainResult, config_identity

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

TABLE_COLUMNS = ("member", "arch", "afa_form", "mode", "k", "coefficient", "l0", "explained_variance", "nmse",
                 "ce_loss_recovered", "kl_sae", "mse_standardized", "train_mse_last", "dead_frac", "dead_frac_train",
                 "dense_frac", "eps_lbo_median", "eps_lbo_form", "pareto_ev", "train_tokens", "train_seconds",
                 "eval_tokens")
"""The columns of ``pareto.csv``, in order (documented in the README)."""


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
        if self.arch in ("topk", "batchtopk"):
            return f"{self.arch}-k{int(self.value)}"
        if self.arch == "topafa":
            return f"topafa-{'exact' if self.exact else self.afa_form}-{shown}"
        return f"{self.arch}-{shown}"

    @property
    def family(self) -> str:
        """The line the member belongs to in the Pareto figure."""
        if self.arch != "topafa":
            return self.arch
        return "topafa (authors-exact)" if self.exact else f"topafa ({self.afa_form})"

    def sae_config(self, d_in: int, d_sae: int, normalization: str, model: str | None, site: str | None,
                   jumprelu_threshold: float = INITIAL_THRESHOLD) -> SAEConfig:
        k = int(self.value) if self.arch in ("topk", "batchtopk") else None
        return SAEConfig(d_in=d_in, d_sae=d_sae, arch=self.arch, k=k, normalization=normalization,
                         afa_form=self.afa_form, authors_exact=self.exact, jumprelu_init_threshold=jumprelu_threshold,
                         model=model, site=site)

    def train_options(self, base: TrainOptions) -> TrainOptions:
        """``base`` with this member's coefficient in place."""
        field = {"relu": "l1_coeff", "jumprelu": "l0_coeff", "topafa": "afa_coeff"}.get(self.arch)
        return dataclasses.replace(base, **({field: float(self.value)} if field else {}))


def _number(text: str, arch: str) -> float:
    try:
        return float(Fraction(text.strip())) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError):
        raise InterlayerError(f"grid value {text!r} for {arch} is not a number (write e.g. 32, 0.001 or 1/32)") from None


def parse_grid(text: str | None, archs: list[str] | tuple[str, ...], latents: int) -> list[GridMember]:
    """The members of a grid string (see the module docstring), restricted to ``archs``;
    an architecture of ``archs`` the text does not mention takes :data:`DEFAULT_GRID`'s
    values. Every value is checked against its range here, before any training."""
    unknown = [a for a in archs if a not in SAE_ARCHITECTURES]
    if unknown:
        raise InterlayerError(f"unknown architecture(s) {choices(unknown)} in --arch; valid choices: "
                              f"{choices(SAE_ARCHITECTURES)}")
    given = _split(text) if text else {}
    extra = [a for a in given if a not in archs]
    if extra:
        raise InterlayerError(f"--grid names {choices(extra)}, which --arch ({','.join(archs)}) leaves out")
    default = _split(DEFAULT_GRID)
    members: list[GridMember] = []
    for arch in archs:
        for value in given.get(arch, default[arch]):
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
        if arch not in SAE_ARCHITECTURES:
            raise InterlayerError(f"unknown architecture {arch!r} in --grid; valid choices: {choices(SAE_ARCHITECTURES)}")
        out.setdefault(arch, []).extend(v.strip() for v in values.split(",") if v.strip())
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
    if arch in ("topk", "batchtopk"):
        if number != int(number) or not 1 <= number <= latents:
            raise InterlayerError(f"grid value k={value} for {arch} is out of range: k must be a whole number from 1 "
                                  f"to the number of latents ({latents})")
    elif not (number >= 0 and math.isfinite(number)):
        name = {"topafa": "λ (the AFA coefficient)", "relu": "the L1 coefficient", "jumprelu": "the L0 coefficient"}[arch]
        raise InterlayerError(f"grid value {value} for {arch} is out of range: {name} must be a finite number >= 0")
    return GridMember(arch, number, form, exact, value)


# ------------------------------------------------------------------ members on disk
def member_identity(cfg: SAEConfig, options: TrainOptions, source: dict[str, Any]) -> dict[str, Any]:
    """What a finished member must share with the grid to be reused (as its checkpoint's)."""
    return json.loads(json.dumps({"sae": config_identity(cfg), "options": options.identity(cfg), "source": source}))


def member_state(path: Path, identity: dict[str, Any]) -> str:
    """``new``, ``training`` (a checkpoint to resume; its identity is checked when it
    loads) or ``finished``; an error for a directory written for another config."""
    if not path.exists():
        return "new"
    if not path.is_dir():
        raise InterlayerError(f"{path} is a file where the sweep member's directory goes; move it or use another --out")
    metrics = path / "metrics.json"
    if metrics.is_file():
        try:
            saved = json.loads(metrics.read_text()).get("identity")
        except (json.JSONDecodeError, AttributeError) as err:
            raise InterlayerError(f"{metrics} is not a sweep member's metrics file ({err})") from err
        if saved != identity:
            diffs = identity_differences(saved or {}, identity)
            raise InterlayerError(f"{path} holds a finished SAE of another config ({'; '.join(diffs[:4])}"
                                  f"{' ...' if len(diffs) > 4 else ''}); it is kept as it is. Use another --out, "
                                  "or the grid and options it was trained with")
        return "finished"
    if (path / CHECKPOINT).is_file():
        return "training"
    if any(path.iterdir()):
        raise InterlayerError(f"{path} holds files that are not a sweep member's (no metrics.json or checkpoint); "
                              "move them or use another --out")
    return "new"


# ------------------------------------------------------------------ table and figure
def pareto_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The sweep's table (columns :data:`TABLE_COLUMNS`), sorted by family then L0, with
    ``pareto_ev`` marking the members no other member beats on both L0 (lower) and
    explained variance (higher)."""
    frame = pd.DataFrame(rows)
    for col in TABLE_COLUMNS:
        if col not in frame:
            frame[col] = None
    frame["pareto_ev"] = [not any((o.l0 <= r.l0 and o.explained_variance >= r.explained_variance and
                                   (o.l0 < r.l0 or o.explained_variance > r.explained_variance))
                                  for o in frame.itertuples()) for r in frame.itertuples()] if len(frame) else []
    return frame[list(TABLE_COLUMNS)].sort_values(["arch", "afa_form", "mode", "l0"], na_position="first",
                                                  kind="stable").reset_index(drop=True)


def _family(row: Any) -> str:
    if row.arch != "topafa":
        return str(row.arch)
    return "topafa (authors-exact)" if row.mode == "authors-exact" else f"topafa ({row.afa_form})"


LOWER_IS_BETTER = frozenset({"nmse", "mse_standardized", "kl_sae", "train_mse_last"})
"""Table columns where the smaller value is the better SAE."""


def matched_l0(table: pd.DataFrame, metric: str = "explained_variance",
               l0s: list[float] | None = None) -> pd.DataFrame:
    """Each architecture's ``metric`` at matched L0: one row per L0 (by default every
    member's own L0), one column per family (architecture; top-AFA per form), and
    ``best``, the family with the best value at that L0 (highest, or lowest for
    :data:`LOWER_IS_BETTER`; missing where fewer than two families have a value). A family's value is interpolated linearly in log L0 between
    its two neighbouring members; outside its members' L0 range it is NaN (no
    extrapolation), so a one-member family has a value only at its own L0."""
    if metric not in table.columns:
        raise InterlayerError(f"no column {metric!r} in the table; valid choices: {choices(list(table.columns))}")
    families = {}
    for row in table.itertuples():
        if pd.notna(row.l0) and pd.notna(getattr(row, metric)) and row.l0 > 0:
            families.setdefault(_family(row), []).append((math.log(row.l0), float(getattr(row, metric))))
    points = sorted(set(l0s if l0s is not None else [float(v) for v in table.l0 if pd.notna(v) and v > 0]))
    frame = pd.DataFrame(index=pd.Index(points, name="l0"))
    for family, pairs in families.items():
        pairs.sort()
        frame[family] = [_interpolate(pairs, math.log(l0)) for l0 in points]
    best = []
    for _, row in frame.iterrows():
        known = row.dropna()
        best.append(None if len(known) < 2 else known.idxmin() if metric in LOWER_IS_BETTER else known.idxmax())
    frame["best"] = best
    return frame


def _interpolate(pairs: list[tuple[float, float]], x: float) -> float:
    """The piecewise-linear value at ``x`` through sorted ``(x, y)`` pairs; NaN outside them."""
    tol = 1e-9
    for (x0, y0), (x1, y1) in zip(pairs, pairs[1:]):
        if x0 - tol <= x <= x1 + tol:
            return y0 if x1 - x0 < tol else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    near = [y for px, y in pairs if abs(px - x) <= tol]
    return near[0] if near else math.nan


PANELS = (("explained_variance", "explained variance"), ("nmse", "NMSE"), ("ce_loss_recovered", "CE loss recovered"),
          ("mse_standardized", "standardised per-element MSE (authors')"))


def pareto_figure(table: pd.DataFrame, title: str = "SAE sweep") -> go.Figure:
    """L0 (log) against each metric of :data:`PANELS`, one line per architecture (top-AFA
    per form), members in order of L0."""
    fig = make_subplots(rows=2, cols=2, subplot_titles=[html.escape(p[1]) for p in PANELS],
                        horizontal_spacing=0.1, vertical_spacing=0.16)
    families = list(dict.fromkeys(_family(r) for r in table.itertuples()))
    palette = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
    for f, family in enumerate(families):
        part = table[[_family(r) == family for r in table.itertuples()]].sort_values("l0")
        labels = [html.escape(str(m)) for m in part.member]
        for p, (col, name) in enumerate(PANELS):
            fig.add_trace(go.Scatter(x=part.l0, y=part[col], mode="lines+markers", name=html.escape(family),
                                     legendgroup=family, showlegend=p == 0, text=labels,
                                     line={"color": palette[f % len(palette)]},
                                     hovertemplate="%{text}<br>L0 %{x:.1f}<br>" + html.escape(name) + " %{y:.4g}<extra></extra>"),
                          row=p // 2 + 1, col=p % 2 + 1)
    for p in range(len(PANELS)):
        fig.update_xaxes(type="log", title_text="L0", row=p // 2 + 1, col=p % 2 + 1)
    for p in (1, 3):  # NMSE and the authors' MSE: log
        fig.update_yaxes(type="log", row=p // 2 + 1, col=p % 2 + 1)
    fig.update_layout(title=html.escape(title), height=760, width=1100)
    return fig


# ------------------------------------------------------------------ the run
@dataclass
class SAESweepResult(Result):
    """A finished sweep: its table, figure and where it was written.

    :meth:`load` reads either a :meth:`save` file or the sweep's own ``--out`` directory
    (its ``pareto.csv`` and ``sweep.json``)."""

    table: pd.DataFrame
    out: Path
    trained: list[str]
    reused: list[str]
    failed: dict[str, str]

    def to_frame(self) -> pd.DataFrame:
        """The Pareto table: one row per member (:func:`pareto_table`)."""
        return self.table

    def plot(self) -> go.Figure:
        """The Pareto figure (:func:`pareto_figure`)."""
        return pareto_figure(self.table)

    def to_json(self) -> dict[str, Any]:
        """The table (``{column: values}``), the directory and which members were trained, reused or failed."""
        return {"table": encode_frame(self.table), "out": str(self.out), "trained": self.trained,
                "reused": self.reused, "failed": self.failed}

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> "SAESweepResult":
        """The result :meth:`to_json` described."""
        require(payload, "table", "out", what="SAESweepResult")
        return cls(decode_frame(payload["table"]), Path(payload["out"]), list(payload.get("trained", [])),
                   list(payload.get("reused", [])), dict(payload.get("failed", {})))

    @classmethod
    def load(cls, path: str | Path) -> "SAESweepResult":
        """A :meth:`save` file, or a sweep's ``--out`` directory (``pareto.csv`` and ``sweep.json``)."""
        path = Path(path).expanduser()
        if not path.is_dir():
            return super().load(path)
        if not (path / "pareto.csv").is_file() or not (path / "sweep.json").is_file():
            raise InterlayerError(f"{path} is not a finished SAE sweep (no pareto.csv and sweep.json)")
        info = json.loads((path / "sweep.json").read_text())
        failed = dict(info.get("failed", {}))
        return cls(pd.read_csv(path / "pareto.csv"), path, [m for m in info.get("finished", []) if m not in failed],
                   [], failed)

    def headline(self) -> dict[str, Any]:
        """Members, failures and where the sweep lives."""
        return {"members": len(self.table), "trained now": len(self.trained), "reused": len(self.reused),
                "failed": len(self.failed), "out": str(self.out)}

    def matched_l0(self, metric: str = "explained_variance", l0s: list[float] | None = None) -> pd.DataFrame:
        """Each architecture's ``metric`` at matched L0 (:func:`matched_l0`)."""
        return matched_l0(self.table, metric, l0s)


def member_metrics(member: GridMember, sae: SAE, evaluation: Any, result: TrainResult,
                   identity: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """A member's ``metrics.json``: evaluation, training, and what identifies it."""
    history = result.history
    metrics = metrics_record(evaluation, tokens=result.tokens, seconds=result.seconds, dead_frac_train=result.dead_frac_window,
                       dead_window_tokens=result.window_tokens)
    metrics.update(describe(sae.cfg))
    metrics.update({"member": member.name, "coefficient": None if member.arch in ("topk", "batchtopk") else member.value,
                    "grid_value": member.text, "train_mse_last": history[-1]["mse"] if history else None,
                    "identity": identity, **extra})
    return metrics


def table_row(metrics: dict[str, Any]) -> dict[str, Any]:
    row = {c: metrics.get(c) for c in TABLE_COLUMNS}
    row["train_tokens"] = metrics.get("tokens")
    row["train_seconds"] = metrics.get("seconds")
    return row




def _member_bytes(cfg: SAEConfig) -> int:
    """Weights, gradients and Adam's two moments of one SAE, in bytes."""
    params = 2 * cfg.d_in * cfg.d_sae + cfg.d_sae * (2 if cfg.arch == "jumprelu" else 1) + cfg.d_in
    return params * 4 * 4


def _train(cfg: Any, plans: list[tuple], source: Any, device: Any,
           progress: bool) -> tuple[dict[str, tuple[SAE, TrainResult]], dict[str, str]]:
    """Train the unfinished members, as many together as memory allows; save each."""
    from .training import train_saes

    out = Path(cfg.out)
    todo = [p for p in plans if p[4] != "finished"]
    per_pass = cfg.members_per_pass or max(1, int(cfg.train_memory_mb * 2**20 // max(_member_bytes(p[1]) for p in plans)))
    trained: dict[str, tuple[SAE, TrainResult]] = {}
    failed: dict[str, str] = {}
    for start in range(0, len(todo), per_pass):
        group = todo[start:start + per_pass]
        results = train_saes(source, [TrainMember(c, o, out / m.name) for m, c, o, _, _ in group], device=device,
                             stop_on_error=False, progress=progress)
        for (member, *_), result in zip(group, results):
            if isinstance(result, Exception):
                failed[member.name] = str(result)
                continue
            result.sae.save(out / member.name)
            result.to_frame().to_csv(out / member.name / "history.csv", index=False)
            trained[member.name] = (result.sae, result)
    return trained, failed


def _evaluate(cfg: Any, plans: list[tuple], trained: dict[str, tuple[SAE, TrainResult]], model: Any, site: str,
              progress: bool) -> None:
    """Evaluate the trained members together; write each one's metrics and figures."""
    from interlayer.model.loading import SAMPLE_TEXT

    from .evaluation import evaluate_saes

    out = Path(cfg.out)
    names = list(trained)
    eval_data = cfg.eval_data or str(SAMPLE_TEXT)
    evaluations = evaluate_saes([trained[n][0] for n in names], model, eval_data, site, tokens=cfg.eval_tokens,
                                context_length=cfg.context_length, batch_size=cfg.eval_batch_size, labels=names,
                                text_field=getattr(cfg, "text_field", "text"), progress=progress)
    for member, sae_cfg, options, identity, _ in plans:
        if member.name not in trained:
            continue
        sae, result = trained[member.name]
        evaluation = evaluations[names.index(member.name)]
        metrics = member_metrics(member, sae, evaluation, result, identity,
                                 {"eval_data": str(eval_data), "train_options": options.identity(sae.cfg),
                                  "train_source": str(cfg.activations), "site": site})
        directory = out / member.name
        write_figures(directory / "figures.html", [result.plot(), evaluation.zf_plot(), evaluation.eps_histogram(),
                                                   evaluation.firing_histogram()])
        write_json_atomic(directory / "metrics.json", metrics)
        (directory / CHECKPOINT).unlink(missing_ok=True)  # ours; the member is finished and saved


def run_sweep(cfg: Any) -> SAESweepResult:
    """``interlayer sae sweep`` as a function (``cfg``: :class:`~interlayer.saes.config.SAESweepConfig`)."""
    from interlayer.store.cache import ActivationStore
    from interlayer.cli.config import check_required
    from interlayer.io.files import check_writable, write_atomic
    from interlayer.store.inputs import check_data_file
    from interlayer.model.loading import SAMPLE_TEXT

    from .sources import CachedSource

    check_required(cfg)
    archs = [a.strip() for a in cfg.arch.split(",") if a.strip()]
    if not archs:
        raise InterlayerError(f"--arch names no architecture; valid choices: {choices(SAE_ARCHITECTURES)}")
    if not (Path(cfg.activations) / "manifest.json").is_file():
        raise InterlayerError(f"--activations {cfg.activations!r} is not an activation cache (no manifest.json); "
                              "write one with `interlayer cache`")
    store = ActivationStore(cfg.activations)
    if cfg.site is None and len(store.sites) != 1:
        raise InterlayerError(f"{cfg.activations} holds several sites {store.sites}; choose one with --site")
    site = store.check_site(cfg.site or store.sites[0])
    d_in = int(store.manifest["d_model"])
    latents = cfg.latents or LATENTS_PER_D_MODEL * d_in
    members = parse_grid(cfg.grid, archs, latents)
    check_writable(cfg.out, directory=True)
    if cfg.eval_data is not None:
        check_data_file(cfg.eval_data, "--eval-data", text_field=getattr(cfg, "text_field", "text"))
    base = train_options(cfg)
    base.progress = not cfg.no_progress
    out = Path(cfg.out)
    source_identity = CachedSource(store, site, base.batch_size, seed=base.seed).identity()
    plans = []
    for member in members:
        sae_cfg = member.sae_config(d_in, latents, cfg.normalization, store.manifest["model"], site, cfg.jumprelu_threshold)
        options = member.train_options(base)
        options.check(sae_cfg)
        identity = member_identity(sae_cfg, options, source_identity)
        plans.append((member, sae_cfg, options, identity, member_state(out / member.name, identity)))
    if (out / "pareto.csv").exists() and not (out / "sweep.json").is_file():
        raise InterlayerError(f"{out} holds a pareto.csv that no sweep wrote (no sweep.json); use another --out")

    model = cfg.load()
    source = CachedSource(ActivationStore(cfg.activations, model=model), site, base.batch_size, seed=base.seed,
                          device=model.device)
    trained, failed = _train(cfg, plans, source, model.device, base.progress)
    if trained:
        _evaluate(cfg, plans, trained, model, site, base.progress)
    rows = []
    for member, *_ in plans:
        path = out / member.name / "metrics.json"
        if path.is_file():
            rows.append(table_row(json.loads(path.read_text())))
    table = pareto_table(rows)
    write_atomic(out / "pareto.csv", table.to_csv(index=False).encode())
    title = f"SAE sweep: {store.manifest['model']} {site}, {latents} latents"
    write_figures(out / "pareto.html", [pareto_figure(table, title)])
    write_json_atomic(out / "sweep.json", {
        "format": 1, "model": store.manifest["model"], "site": site, "latents": latents, "activations": str(cfg.activations),
        "grid": cfg.grid or DEFAULT_GRID, "arch": archs, "members": [m.name for m, *_ in plans],
        "finished": [m.name for m, *_ in plans if (out / m.name / "metrics.json").is_file()], "failed": failed,
        "eval_data": cfg.eval_data or str(SAMPLE_TEXT), "eval_tokens": cfg.eval_tokens,
        "train_options": base.identity(), "columns": list(TABLE_COLUMNS)})
    reused = [p[0].name for p in plans if p[4] == "finished"]
    return SAESweepResult(table, out, list(trained), reused, failed)


SweepResult = SAESweepResult
"""Deprecated name of :class:`SAESweepResult` (one release; it clashed with the steering sweep's)."""

__all__ = ["GridMember", "DEFAULT_GRID", "TABLE_COLUMNS", "parse_grid", "pareto_table", "pareto_figure", "matched_l0",
           "member_identity", "member_state", "SAESweepResult", "run_sweep"]
