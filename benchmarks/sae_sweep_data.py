"""The text of the Gemma SAE sweep (README findings), built from ``../shared/data``.

    python benchmarks/sae_sweep_data.py --out DIR [--shared ../shared/data]

Writes ``DIR/train.txt`` (one document per line: the paragraphs of the four Gutenberg
novels, Tiny Shakespeare's speeches, WikiText-2's validation articles' paragraphs and
the FLORES-200 devtest sentences of all 34 languages; about 2.4M Gemma tokens) and
``DIR/heldout.txt`` (WikiText-2 raw test, never trained on), and prints their sha256.
"""

from __future__ import annotations

import argparse
import hashlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def paragraphs(text: str) -> list[str]:
    """Blank-line separated paragraphs, each joined onto one line."""
    out = []
    for block in re.split(r"\n\s*\n", text.replace("\r\n", "\n").lstrip("\ufeff")):
        line = " ".join(block.split())
        if line:
            out.append(line)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    shared, out = Path(args.shared), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    docs: list[str] = []
    for path in sorted((shared / "text" / "gutenberg").glob("*.txt")):
        docs += paragraphs(path.read_text(encoding="utf-8"))
    docs += paragraphs((shared / "text" / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8"))
    docs += paragraphs((shared / "text" / "wikitext2" / "valid.tokens.txt").read_text(encoding="utf-8").replace("\n", "\n\n"))
    for path in sorted((shared / "flores200" / "devtest").glob("*.devtest")):
        docs += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    train = "\n".join(docs) + "\n"
    heldout = (shared / "text" / "wikitext2" / "wiki.test.raw").read_text(encoding="utf-8").replace("\r\n", "\n")
    for name, text in (("train.txt", train), ("heldout.txt", heldout)):
        (out / name).write_text(text, encoding="utf-8")
        print(f"{out / name}: {len(text.splitlines())} lines, sha256 {hashlib.sha256(text.encode()).hexdigest()}")


if __name__ == "__main__":
    main()
