"""The knowledge-layer findings of the README, on one embedded model:

1. ``alpha``: LFD's alpha chosen on a held-out split (NQ records 400-499, open book,
   answer-contained; ties go to the smaller alpha);
2. ``iks``: IKS per layer on NQ with and without the gold passage (per decoding step),
   the fusion layer l* and the per-step choices;
3. ``sim_hidden``: SimHidden per layer (NQ, with vs without the answer sentence);
4. ``qa``: NQ closed and open book (and open book with 4 noise passages), and
   ``known`` closed book, with greedy, LFD, DoLa and LFD with a random layer.

    python benchmarks/knowledge_findings.py --model smollm2-135m-instruct [--n 100] [--only qa]

Writes ``benchmarks/results/knowledge_findings_<model>.json`` (each part as it finishes;
a rerun skips the parts already there) and the figures next to it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import interlayer
from interlayer.io.files import write_json_atomic
from interlayer.lens.fused_decoding import DecodingOptions
from interlayer.lens.knowledge_runs import iks_on_data, sim_hidden_on_data
from interlayer.lens.qa import evaluate_qa

RESULTS = Path(__file__).parent / "results"
ALPHAS = (0.25, 0.5, 1.0, 2.0)
HELD_OUT = 400


def choose_alpha(model, n: int, batch_size: int) -> dict:
    rows = []
    for alpha in ALPHAS:
        r = evaluate_qa(model, "nq", n, decodings=["lfd"], options=DecodingOptions(alpha=alpha), settings=["open_book"],
                        start=HELD_OUT, batch_size=batch_size, progress=False)
        s = r.scores[0]
        rows.append({"alpha": alpha, "contained": s.contained, "exact_match": s.exact_match, "n": s.n})
        print(f"  alpha {alpha}: contained {s.contained:.3f}, EM {s.exact_match:.3f}")
    best = max(rows, key=lambda r: (r["contained"], r["exact_match"], -r["alpha"]))
    return {"split": f"nq records {HELD_OUT}-{HELD_OUT + n - 1}, open book", "criterion": "answer-contained, then EM, "
            "then the smaller alpha", "grid": rows, "chosen": best["alpha"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--n", type=int, default=100, help="questions per QA setting")
    parser.add_argument("--n-iks", type=int, default=50)
    parser.add_argument("--n-alpha", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--only", default=None, help="comma-separated parts: alpha, iks, sim_hidden, qa")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    model = interlayer.load_model(args.model, device="cpu")
    path = RESULTS / f"knowledge_findings_{model.name}.json"
    out = json.loads(path.read_text()) if path.is_file() else {"model": model.name}
    parts = args.only.split(",") if args.only else ["alpha", "iks", "sim_hidden", "qa"]

    def save(part: str, value) -> None:
        out[part] = value
        write_json_atomic(path, out)

    t0 = time.perf_counter()
    if "alpha" in parts and "alpha" not in out:
        print("alpha on the held-out split")
        save("alpha", choose_alpha(model, args.n_alpha, args.batch_size))
    if "iks" in parts and "iks" not in out:
        iks = {}
        for passage in (True, False):
            r = iks_on_data(model, "nq", args.n_iks, passage=passage, batch_size=args.batch_size, progress=False)
            iks["open_book" if passage else "closed_book"] = r.to_json()
            r.plot().write_html(RESULTS / f"knowledge_iks_{model.name}_{'open' if passage else 'closed'}.html",
                                include_plotlyjs="cdn")
            print(f"IKS ({'open' if passage else 'closed'} book): l* = {r.layer}, histogram {r.histogram}")
        save("iks", iks)
    if "sim_hidden" in parts and "sim_hidden" not in out:
        r = sim_hidden_on_data(model, "nq", args.n_iks, batch_size=args.batch_size, progress=False)
        r.plot().write_html(RESULTS / f"knowledge_simhidden_{model.name}.html", include_plotlyjs="cdn")
        print("SimHidden:", [round(float(x), 3) for x in r.mean])
        save("sim_hidden", r.to_json())
    if "qa" in parts:
        qa = out.get("qa", {})
        alpha = out.get("alpha", {}).get("chosen", DecodingOptions().alpha)
        runs = {"nq": dict(data="nq"), "nq_noise4": dict(data="nq", noise_docs=4, settings=["open_book"]),
                "known": dict(data="known")}
        for name, kwargs in runs.items():
            if name in qa:
                continue
            progress = RESULTS / f".knowledge_qa_{model.name}_{name}.progress.jsonl"
            r = evaluate_qa(model, n=args.n, options=DecodingOptions(alpha=alpha), batch_size=args.batch_size,
                            progress_file=progress, progress=True, **kwargs)
            print(f"{name}:\n{r.table()}")
            payload = r.to_json()
            payload["examples"] = payload["examples"][:20]  # the first 20 predictions, for reading
            qa[name] = payload
            save("qa", qa)
            progress.unlink(missing_ok=True)
    out["seconds"] = round(out.get("seconds", 0) + time.perf_counter() - t0, 1)
    write_json_atomic(path, out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
