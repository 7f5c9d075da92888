"""SAE benchmark: fast top-AFA selection vs the full sort, and training-step throughput of
our TopK and top-AFA against SAELens's TopK training SAE, on one batch shape and device.

    python benchmarks/sae.py [--device cuda] [--batch 4096] [--d-in 640] [--latents 10240]
                             [--sae DIR --activations DIR]

Targets (issues 6 and 14): selection >= 3x faster than the full sort at h = 16 d, also
with the encoder included (``fast+enc`` is the SAE's own path, ``topafa.encode``:
candidates from ``topk`` of ``pre * ||W_dec||``, the code scattered from them;
``sort+enc`` builds every score and the mask and sorts); top-AFA training within 1.3x of
TopK. Training steps decode through the chosen decoder rows (``embedding_bag``) for
TopK and top-AFA, as the SAE does. All timings are side by side in this one process
(SAELens, installed in the same environment, runs in a subprocess that times its own steps), in
interleaved rounds, and the medians are compared. With ``--sae`` and
``--activations`` the selection is timed on a trained SAE's pre-activations over real
activations (its k distribution is what makes the candidate set small); otherwise on a
freshly initialised SAE and Gaussian inputs. Writes benchmarks/results/sae.json
(or --out).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.append(str(Path(__file__).resolve().parents[1]))  # after an installed interlayer

from benchmarks.common import device_name, sync, timed, write_result  # noqa: E402
from interlayer.saes import SAE, SAEConfig  # noqa: E402
from interlayer.saes import topafa  # noqa: E402
from interlayer.saes.archs import candidates_for  # noqa: E402
from interlayer.saes.training import TrainOptions, batch_losses  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


CONFIGS = {
    "ours_topk": "interlayer TopK, the trainer's step (batch_losses + optimizer_step): the sparse step "
                 "(saes/fused_encoder.py), fp32, torch Adam as the trainer builds it, AuxK aux_k=512",
    "ours_topk_dense": "the same SAE on the dense path the sparse step replaced (dense f, (x - b_dec) W_enc, "
                       "dense AuxK)",
    "ours_topk_tf32": "ours_topk with TrainOptions.tf32 (CUDA only)",
    "ours_topafa": "interlayer top-AFA (centred form), fp32; on fresh weights (no --sae) its code holds ~40% of the latents, so it trains on the dense path",
}


def _our_trainers(args, x, h, sel_sae, device):
    """Our steps by name, each as the trainer takes it."""
    from interlayer.saes.losses import optimizer_step
    from interlayer.saes.options import matmul_precision

    trainers = {}
    for name in ("ours_topk", "ours_topk_dense", "ours_topk_tf32", "ours_topafa"):
        if name == "ours_topk_tf32" and device.type != "cuda":
            continue
        arch = "topafa" if name == "ours_topafa" else "topk"
        cfg = SAEConfig(d_in=args.d_in, d_sae=h, arch=arch, k=args.k if arch == "topk" else None,
                        normalization=sel_sae.cfg.normalization, scale=sel_sae.cfg.scale)
        sae = SAE(cfg).to(device).train()
        if args.sae:  # both start from the trained top-AFA weights, so top-AFA's k is realistic
            sae.load_state_dict(sel_sae.state_dict())
        if name == "ours_topk_dense":
            sae.activation.sparse_step = lambda d_sae: False
        options = TrainOptions(batch_size=x.shape[0], progress=False, tf32=name == "ours_topk_tf32")
        opt = torch.optim.Adam(sae.parameters(), lr=3e-4, betas=(0.9, 0.99))  # as saes/checkpoint.py builds it
        dead = torch.zeros(h, dtype=torch.bool, device=device)
        dead[-h // 4:] = True

        def step(sae=sae, opt=opt, dead=dead, options=options):
            with matmul_precision(options.tf32):
                terms = batch_losses(sae, x, options, dead)
                optimizer_step(sae, opt, terms["loss"], 3e-4)
        trainers[name] = step
    return trainers


def _anchor_commands(args, batch, h):
    """The anchors' subprocess command lines by name (SAELens and sparsify, same shape and dead mask)."""
    python = shutil.which(args.saelens_python) or args.saelens_python
    common = ["--batch", str(batch), "--d-in", str(args.d_in), "--d-sae", str(h), "--k", str(args.k), "--steps",
              str(args.steps), "--device", args.device, "--threads", str(torch.get_num_threads())]
    out = {}
    if not args.no_saelens and Path(python).exists():
        out["saelens_topk"] = [str(python), str(ROOT / "benchmarks" / "saelens_step.py"), *common, "--sparse", "1"]
    if not args.no_sparsify:
        out["sparsify_topk"] = [str(python), str(ROOT / "benchmarks" / "sparsify_step.py"), *common]
    return out


anchor_notes: dict[str, object] = {}


def _run_anchor(command, notes, name):
    """Seconds per step of one anchor run; SAELens's sparse-activation option is tried
    first and, if its training step fails, replaced by its dense default (noted)."""
    run = subprocess.run(command, capture_output=True, text=True)
    if run.returncode and "--sparse" in command and command[-1] == "1":
        error = [line for line in run.stderr.splitlines() if "Error" in line][-1:]
        notes[name + "_sparse_activations"] = f"failed, dense default timed instead: {error[0][:160] if error else ''}"
        command[-1] = "0"
        run = subprocess.run(command, capture_output=True, text=True)
    if run.returncode:
        notes[name + "_error"] = run.stderr.strip().splitlines()[-1][:300] if run.stderr.strip() else "failed"
        return None
    line = json.loads(run.stdout.strip().splitlines()[-1])
    notes[name] = line.get("config")
    return line["seconds_per_step"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=None, help="tokens per batch (default 4096 on GPU, 1024 on CPU)")
    parser.add_argument("--d-in", type=int, default=640)
    parser.add_argument("--latents", type=int, default=None, help="h (default 16 x d_in)")
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--sae", default=None, help="a trained SAE directory: top-AFA selection is timed on its "
                        "pre-activations (any architecture's weights give a realistic k distribution)")
    parser.add_argument("--activations", default=None, help="cached activations at that SAE's site")
    parser.add_argument("--rows", default=None, help="instead of --activations: a safetensors file whose tensor 'x' "
                        "holds the rows (a batch saved from such a cache, for machines the cache cannot travel to)")
    parser.add_argument("--no-saelens", action="store_true")
    parser.add_argument("--no-sparsify", action="store_true")
    parser.add_argument("--saelens-python", default=sys.executable,
                        help="the Python that has SAELens (default: this one; SAELens installs beside interlayer)")
    parser.add_argument("--selection-only", action="store_true", help="skip the training-step comparison")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sae.json"))
    args = parser.parse_args()
    device = torch.device(args.device)
    batch = args.batch or (4096 if device.type == "cuda" else 1024)
    h = args.latents or 16 * args.d_in
    torch.manual_seed(0)

    # ---- selection: fast vs full sort, with and without the encoder matmul
    if args.sae:
        from interlayer.store.cache import ActivationStore

        sel_sae = SAE.load(args.sae, device=device).eval()
        if args.rows:
            from safetensors.torch import load_file

            x_sel = load_file(args.rows)["x"][:batch].to(device, torch.float32)
        else:
            store = ActivationStore(args.activations)
            x_sel = next(store.batches(sel_sae.cfg.site, batch, seed=1, device=device))
        h = sel_sae.d_sae
        args.d_in = sel_sae.d_in
        source = f"trained SAE {args.sae} on {args.rows or args.activations}"
    else:
        sel_sae = SAE(SAEConfig(d_in=args.d_in, d_sae=h, arch="topafa")).to(device).eval()
        x_sel = torch.randn(batch, args.d_in, device=device)
        source = "freshly initialised SAE, Gaussian inputs"
    with torch.no_grad():
        out = sel_sae(x_sel)
        centred = out.x_in - sel_sae.b_dec
        scores = (torch.relu(out.pre) * sel_sae.W_dec.norm(dim=-1)).square()
        target = centred.norm(dim=-1)
        ref, fast = topafa.select_sorted(scores, target), topafa.select(scores, target)
        assert torch.equal(scores * ref.keep, scores * fast.keep) and torch.equal(ref.k, fast.k)
        k_stats = {"mean": float(ref.k.float().mean()), "max": int(ref.k.max()), "median": float(ref.k.float().median())}
        # what the training loop would start from after one batch like this (see candidates_for)
        first = candidates_for(ref.k)
        k_stats["first_candidates"] = first

        def encode_sorted():  # the reference: scores and mask over all latents, a full sort
            x_in = out.x_in
            pre = (x_in - sel_sae.b_dec) @ sel_sae.W_enc + sel_sae.b_enc
            acts = torch.relu(pre)
            chosen = topafa.select_sorted((acts * sel_sae.W_dec.norm(dim=-1)).square(), (x_in - sel_sae.b_dec).norm(dim=-1))
            return acts * chosen.keep

        def encode_fast():  # what the SAE runs: topafa.encode, candidates from topk of pre * ||W_dec||
            x_in = out.x_in
            pre = (x_in - sel_sae.b_dec) @ sel_sae.W_enc + sel_sae.b_enc
            return topafa.encode(pre, sel_sae.W_dec.norm(dim=-1), (x_in - sel_sae.b_dec).norm(dim=-1), first)[0]

        assert torch.equal(encode_sorted(), encode_fast())

        def topk_encode():
            pre = (out.x_in - sel_sae.b_dec) @ sel_sae.W_enc + sel_sae.b_enc
            return torch.relu(pre).topk(args.k, dim=-1)

        rounds = {"sort": [], "fast": [], "sort+enc": [], "fast+enc": [], "topk+enc": []}
        for _ in range(args.rounds):
            rounds["sort"].append(timed(lambda: topafa.select_sorted(scores, target), device, 3))
            rounds["fast"].append(timed(lambda: topafa.select(scores, target, first), device, 3))
            rounds["sort+enc"].append(timed(encode_sorted, device, 3))
            rounds["fast+enc"].append(timed(encode_fast, device, 3))
            rounds["topk+enc"].append(timed(topk_encode, device, 3))
    selection = {k: statistics.median(v) * 1e3 for k, v in rounds.items()}
    selection_speedup = selection["sort"] / selection["fast"]
    selection_speedup_enc = selection["sort+enc"] / selection["fast+enc"]

    if args.selection_only:
        result = {"device": device_name(device), "batch": batch, "d_in": args.d_in, "d_sae": h,
                  "selection_source": source, "topafa_k": k_stats, "selection_ms": selection,
                  "selection_speedup_vs_sort": selection_speedup,
                  "selection_with_encoder_speedup_vs_sort": selection_speedup_enc, "rounds": args.rounds,
                  "torch": torch.__version__}
        print(json.dumps(result, indent=2))
        write_result(args.out, result)
        return

    # ---- training steps: ours (sparse and the dense path it replaced), top-AFA, SAELens, sparsify
    x = x_sel if args.sae else torch.randn(batch, args.d_in, device=device)
    trainers = _our_trainers(args, x, h, sel_sae, device)
    anchors = _anchor_commands(args, batch, h)
    per_step = {name: [] for name in [*trainers, *anchors]}
    for _ in range(args.rounds):
        for name, step in trainers.items():
            step()
            sync(device)
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            sync(device)
            per_step[name].append((time.perf_counter() - start) / args.steps)
        for name, command in anchors.items():
            seconds = _run_anchor(command, anchor_notes, name)
            if seconds is not None:
                per_step[name].append(seconds)
    med = {k: statistics.median(v) for k, v in per_step.items() if v}
    tokens_per_s = {k: batch / v for k, v in med.items()}

    def ratio(ours, theirs):
        return med[theirs] / med[ours] if ours in med and theirs in med else None

    result = {
        "device": device_name(device), "batch": batch, "d_in": args.d_in, "d_sae": h, "k_topk": args.k,
        "selection_source": source, "topafa_k": k_stats,
        "selection_ms": selection, "selection_speedup_vs_sort": selection_speedup,
        "selection_with_encoder_speedup_vs_sort": selection_speedup_enc,
        "train_ms_per_step": {k: v * 1e3 for k, v in med.items()},
        "train_tokens_per_s": tokens_per_s, "configurations": {**CONFIGS, **anchor_notes},
        "topafa_step_time_over_topk": med["ours_topafa"] / med["ours_topk"],
        "ours_topk_over_dense_path_speed": ratio("ours_topk", "ours_topk_dense"),
        "ours_topk_over_saelens_topk_speed": ratio("ours_topk", "saelens_topk"),
        "ours_topk_over_sparsify_topk_speed": ratio("ours_topk", "sparsify_topk"),
        "ours_topk_tf32_over_sparsify_topk_speed": ratio("ours_topk_tf32", "sparsify_topk"),
        "rounds": args.rounds, "steps_per_round": args.steps, "torch": torch.__version__,
    }
    print(json.dumps(result, indent=2))
    write_result(args.out, result)


if __name__ == "__main__":
    main()
