"""CLIP's byte-pair tokenizer without torch, so a text query need not import torch.

Ported from open_clip's SimpleTokenizer (itself from openai/CLIP, MIT License, Copyright (c) 2021
OpenAI) with its default settings: "lower" cleaning, plain truncation. It reads the vocabulary file
that open_clip ships, without importing open_clip. The text-tower export (export.py) checks that
it gives the same tokens as the model's own tokenizer before a query may rely on it.
"""

from __future__ import annotations

import gzip
import html
import importlib.util
import os
from functools import lru_cache

import numpy as np
import regex

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
SPECIAL_TOKENS = ("<start_of_text>", "<end_of_text>")
MERGES = 49152 - 256 - 2  # CLIP uses the first 48,894 merges of the file


def default_vocab_path() -> str:
    """open_clip's copy of CLIP's BPE merges (found without importing open_clip, which imports torch)."""
    spec = importlib.util.find_spec("open_clip")
    assert spec is not None and spec.submodule_search_locations, "open_clip is a dependency"
    return os.path.join(spec.submodule_search_locations[0], VOCAB_FILE)


@lru_cache(maxsize=1)
def _byte_to_unicode() -> dict[int, str]:
    """A reversible map of the 256 byte values to printable characters, as CLIP's BPE expects."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes)))


class ClipTokenizer:
    """Texts -> CLIP token ids: <start_of_text> BPE tokens <end_of_text>, cut to context_length."""

    def __init__(self, context_length: int = 77, vocab_path: str | None = None) -> None:
        merges = _read_merges(vocab_path or default_vocab_path())  # "first second", best first
        self._ranks = {merge: rank for rank, merge in enumerate(merges)}
        symbols = list(_byte_to_unicode().values())
        # ids: the 256 byte symbols, the same ending a word ("</w>"), one per merge, the specials
        self._symbol_ids = {s: i for i, s in enumerate([*symbols, *(s + "</w>" for s in symbols)])}
        self._merge_base = len(self._symbol_ids)
        self.sot = self._merge_base + len(merges)
        self.eot = self.sot + 1
        self._cache: dict[str, list[int]] = {}
        self._pattern = regex.compile(
            "|".join(SPECIAL_TOKENS) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )
        self.context_length = context_length

    def __call__(self, texts: list[str]) -> np.ndarray:
        """(n, context_length) int64 token ids, zero-padded; over-long texts end in <end_of_text>."""
        result = np.zeros((len(texts), self.context_length), dtype=np.int64)
        for row, text in zip(result, texts):
            tokens = [self.sot, *self.encode(text), self.eot][: self.context_length]
            tokens[-1] = self.eot
            row[: len(tokens)] = tokens
        return result

    def encode(self, text: str) -> list[int]:
        """BPE ids of one text, without the start and end tokens."""
        text = " ".join(html.unescape(html.unescape(_fix_text(text))).strip().split()).lower()
        ids: list[int] = []
        byte_map = _byte_to_unicode()
        for word in self._pattern.findall(text):
            ids.extend(self._bpe("".join(byte_map[b] for b in word.encode("utf-8"))))
        return ids

    def _bpe(self, word: str) -> list[int]:
        """Merge the word's symbols pair by pair, best-ranked pair first. A merged symbol's id is
        its merge's rank plus the symbol count: CLIP's vocabulary lists the merges in rank order."""
        if word in SPECIAL_TOKENS:
            return [self.sot if word == SPECIAL_TOKENS[0] else self.eot]
        if word not in self._cache:
            parts = [*word[:-1], word[-1] + "</w>"]
            ids = [self._symbol_ids[p] for p in parts]
            while len(parts) > 1:
                pairs = {f"{a} {b}" for a, b in zip(parts, parts[1:])}
                best = min(pairs, key=lambda p: self._ranks.get(p, len(self._ranks)))
                if best not in self._ranks:
                    break
                merged_id = self._merge_base + self._ranks[best]
                new_parts: list[str] = []
                new_ids: list[int] = []
                i = 0
                while i < len(parts):
                    if i < len(parts) - 1 and f"{parts[i]} {parts[i + 1]}" == best:
                        new_parts.append(parts[i] + parts[i + 1])
                        new_ids.append(merged_id)
                        i += 2
                    else:
                        new_parts.append(parts[i])
                        new_ids.append(ids[i])
                        i += 1
                parts, ids = new_parts, new_ids
            self._cache[word] = ids
        return self._cache[word]


def _read_merges(path: str) -> list[str]:
    """The first MERGES lines after the header, decompressing only as much of the file as needed
    (the file holds five times more)."""
    chunks, lines = [], 0
    with gzip.open(path) as f:
        while lines <= MERGES and (chunk := f.read(1 << 16)):
            chunks.append(chunk)
            lines += chunk.count(b"\n")
    return b"".join(chunks).decode("utf-8").split("\n", MERGES + 1)[1 : MERGES + 1]


def _fix_text(text: str) -> str:
    """ftfy.fix_text, as CLIP cleans text; printable ASCII without entities is left as it is by ftfy,
    so a typical query skips importing it (65 ms of a cold query)."""
    if text.isascii() and text.isprintable() and "&" not in text:
        return text
    import ftfy

    return ftfy.fix_text(text)
