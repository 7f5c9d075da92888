"""Token-prefix sets: every vocabulary entry that could start writing a word.

Following Wendler et al. (2024), a word's probability mass at a layer is the summed
probability of all tokens that spell a non-empty prefix of it, with and without the
tokenizer's leading-space marker; for a word starting with a non-ASCII character
the byte token of its first UTF-8 byte counts too (byte-fallback vocabularies). The
mass approximates the probability that the model starts writing the word next; for
multi-token words it is the mass of their possible first tokens.

Three vocabulary styles are recognised: SentencePiece (``▁`` marks a space, byte
fallback as ``<0xE8>``), byte-level BPE (``Ġ`` marks a space, every byte has a
printable stand-in) and plain (the vocabulary holds the text itself).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any


@lru_cache(maxsize=1)
def _byte_to_unicode() -> dict[int, str]:
    """The printable stand-in of every byte used by byte-level BPE vocabularies
    (GPT-2 and its descendants): printable Latin-1 bytes stand for themselves, the
    rest are shifted past 255 in order."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    mapping = {b: chr(b) for b in keep}
    shift = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + shift)
            shift += 1
    return mapping


class PrefixIndex:
    """Looks up the token ids that spell prefixes of a word in one tokenizer's vocabulary."""

    def __init__(self, tokenizer: Any) -> None:
        self.vocab: dict[str, int] = dict(tokenizer.get_vocab())
        tokens = self.vocab.keys()
        if any(t.startswith("▁") for t in tokens):
            self.style = "sentencepiece"
        elif any(t.startswith("Ġ") for t in tokens):
            self.style = "byte_level"
        else:
            self.style = "plain"

    def _forms(self, word: str) -> list[str]:
        """Vocabulary spellings of every prefix of ``word``, with and without a leading space."""
        if self.style == "byte_level":
            table = _byte_to_unicode()
            data = word.encode("utf-8")
            pieces = ["".join(table[b] for b in data[:i]) for i in range(1, len(data) + 1)]
            return pieces + [table[ord(" ")] + p for p in pieces]
        prefixes = [word[:i] for i in range(1, len(word) + 1)]
        space = "▁" if self.style == "sentencepiece" else " "
        forms = prefixes + [space + p for p in prefixes]
        if self.style == "sentencepiece" and word and ord(word[0]) > 127:
            forms.append(f"<0x{word[0].encode('utf-8')[0]:02X}>")
        return forms

    def ids(self, word: str) -> set[int]:
        """Ids of all tokens spelling a non-empty prefix of ``word`` (empty if none)."""
        return {self.vocab[f] for f in self._forms(word) if f in self.vocab}
