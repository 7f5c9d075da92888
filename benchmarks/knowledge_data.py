"""Regenerate the vendored QA subsets in this folder from the project's staged copy.

Run from anywhere (stdlib only; the package never imports this file)::

    python3 benchmarks/knowledge_data.py [--source ../shared/data/knowledge]

It checks the staged files against the sha256 sums their SOURCE.txt records, writes
``nq_open_oracle_500.jsonl.gz``, ``squad_500.json`` and ``known_1000.json`` with the
same bytes every run (the first N records in file order, gzip with mtime 0), and
rewrites ``SOURCE.txt`` with the sums of what it wrote. ``LICENSE-NOTICES.txt`` is
written by hand and left alone.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HERE = REPO / "lens" / "data" / "knowledge"  # where the subsets go
DEFAULT_SOURCE = REPO.parent / "shared" / "data" / "knowledge"
N_NQ = 500
N_SQUAD = 500

# sha256 of the staged inputs, as recorded in shared/data/knowledge/SOURCE.txt
INPUTS = {
    "nq-open-oracle.jsonl.gz": "6a7f72b846f663a133ef952244e5a4e43f06bcf190afe34e8fbe687ce0d1653e",
    "squad_v2.0_subset.json": "09f00c20db2d3967d8cb2b037a34f7c752774fe80f58e6fe380a5a31863fb3f2",
    "known_1000.json": "685ed2a0c3e8323921ea8a945b237cfe75e1f4948b9dda7a92aa6c2401f1d9df",
}


def sha256(data: bytes) -> str:
    """Hex sha256 of some bytes."""
    return hashlib.sha256(data).hexdigest()


def json_list(records: list[dict]) -> bytes:
    """A JSON list with one record per line (readable diffs), UTF-8, trailing newline."""
    lines = ",\n".join(json.dumps(r, ensure_ascii=False) for r in records)
    return f"[\n{lines}\n]\n".encode("utf-8")


def nq_subset(raw: bytes) -> bytes:
    """First N_NQ NQ-Open records: question, answers and the gold passage (ctxs[0])."""
    out = []
    for line in gzip.decompress(raw).decode("utf-8").splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        gold = record["ctxs"][0]
        out.append({"question": record["question"], "answers": record["answers"],
                    "title": gold["title"], "passage": gold["text"]})
        if len(out) == N_NQ:
            break
    body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out).encode("utf-8")
    return gzip.compress(body, compresslevel=9, mtime=0)


def squad_subset(raw: bytes) -> bytes:
    """First N_SQUAD SQuAD 2.0 records: id, question, [answer], context as passage."""
    records = json.loads(raw)[:N_SQUAD]
    return json_list([{"id": r["id"], "question": r["question"], "answers": [r["answer"]], "passage": r["context"]}
                      for r in records])


def known_subset(raw: bytes) -> bytes:
    """Every ROME known-facts record, as a closed-book cloze: prompt as question, attribute as answer."""
    return json_list([{"id": str(r["known_id"]), "question": r["prompt"], "answers": [r["attribute"]],
                       "subject": r["subject"], "relation_id": r["relation_id"]} for r in json.loads(raw)])


OUTPUTS = {
    "nq_open_oracle_500.jsonl.gz": ("nq-open-oracle.jsonl.gz", nq_subset),
    "squad_500.json": ("squad_v2.0_subset.json", squad_subset),
    "known_1000.json": ("known_1000.json", known_subset),
}

SOURCE_TEMPLATE = """\
Knowledge / QA data vendored into interlayer.lens (the subsets `interlayer qa` needs).
Taken from the project's staged copy (shared/data/knowledge), whose provenance follows; regenerate
with benchmarks/knowledge_data.py (it checks the staged files' sha256 first). No code was copied.

[A] nq_open_oracle_500.jsonl.gz -- NaturalQuestions-Open with the gold (oracle) Wikipedia passage
  from:     nelson-liu/lost-in-the-middle, commit 29b8a6d042ce29abccee3db1a73171a107d7e6af,
            path qa_data/nq-open-oracle.jsonl.gz (2,655 records)
  licences: repository MIT ("Copyright (c) 2023 Nelson Liu"); Natural Questions (Kwiatkowski et al. 2019)
            CC BY-SA 3.0; passages are Wikipedia text (CC BY-SA). See LICENSE-NOTICES.txt.
  kept:     the first {n_nq} records in file order, as gzip JSONL lines {{"question", "answers", "title",
            "passage"}} where title/passage are ctxs[0]'s title/text (the gold passage); hasanswer, isgold
            and nq_annotated_gold dropped. Gzipped with mtime 0 (deterministic bytes).

[B] squad_500.json -- SQuAD 2.0 question/context/answer (Rajpurkar et al. 2018), answerable questions only
  from:     lab-paper-code/dual_path_attribution, commit 411720aaa63c1b479ad425d3b950f55d04d72918,
            path data/squad_v2.0.json (1,978 records, filtered by that repository)
  licences: repository MIT ("Copyright (c) 2026 lab-paper-code"); SQuAD 2.0 CC BY-SA 4.0 (passages from
            Wikipedia). See LICENSE-NOTICES.txt.
  kept:     the first {n_squad} records in file order as a JSON list of {{"id", "question", "answers": [answer],
            "passage": context}}; answer_span and the per-model boolean keys dropped. Several questions
            share one passage ({n_squad_passages} distinct passages).

[C] known_1000.json -- ROME "known facts" factual-recall prompts (Meng et al. 2022), closed-book cloze
  from:     MaxLEAF3824/gpt_re, commit a0134700ce4c073ad92b75facb15ae180c9b3e24 (blob
            a05a102b91684b1b9e2766bfeb22a54396ba6a05), path data/known_1000.json (1,209 records)
  licences: that repository has no licence file; the data originates in kmeng01/rome, MIT
            ("Copyright (c) 2022 Kevin Meng"). See LICENSE-NOTICES.txt.
  kept:     all {n_known} records as a JSON list of {{"id": str(known_id), "question": prompt,
            "answers": [attribute], "subject", "relation_id"}}; template and the GPT-2 "prediction" dropped.
            No passage: the prompt is a cloze the model completes from memory.

FILES (records, bytes, sha256):
{files}
"""


def main(argv: list[str] | None = None) -> int:
    """Check the staged inputs, write the subsets and SOURCE.txt, print the sums."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="folder with the staged files")
    args = parser.parse_args(argv)
    raws = {}
    for name, expected in INPUTS.items():
        raw = (args.source / name).read_bytes()
        if sha256(raw) != expected:
            print(f"{args.source / name}: sha256 {sha256(raw)} differs from the recorded {expected}", file=sys.stderr)
            return 1
        raws[name] = raw
    counts = {}
    lines = []
    for out_name, (in_name, make) in OUTPUTS.items():
        data = make(raws[in_name])
        (HERE / out_name).write_bytes(data)
        text = gzip.decompress(data).decode("utf-8") if out_name.endswith(".gz") else data.decode("utf-8")
        counts[out_name] = len(text.splitlines()) if out_name.endswith(".gz") else len(json.loads(text))
        lines.append(f"  {out_name:<30} {counts[out_name]:>5} records {len(data):>9} bytes  sha256={sha256(data)}")
    squad_passages = len({r["passage"] for r in json.loads((HERE / "squad_500.json").read_bytes())})
    source = SOURCE_TEMPLATE.format(n_nq=counts["nq_open_oracle_500.jsonl.gz"], n_squad=counts["squad_500.json"],
                                    n_squad_passages=squad_passages, n_known=counts["known_1000.json"],
                                    files="\n".join(lines))
    (HERE / "SOURCE.txt").write_text(source, encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
