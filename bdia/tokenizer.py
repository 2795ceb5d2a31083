"""A byte-level CLIP tokenizer that needs no download.

Every UTF-8 byte is one token (with and without CLIP's end-of-word marker), so any
prompt tokenizes offline. Small models trained in this repository (``tiny-random``,
``shapes``) use it; saved with ``save_pretrained`` it loads back as a plain
``CLIPTokenizer``.
"""

from __future__ import annotations

from functools import lru_cache

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


@lru_cache(maxsize=1)
def _byte_symbols() -> tuple[str, ...]:
    """GPT-2/CLIP's reversible byte → printable-unicode table, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return tuple(table[b] for b in range(256))


def byte_vocab() -> dict[str, int]:
    """Token → id: the two special tokens, then 256 byte tokens, then 256 end-of-word byte tokens."""
    vocab = {BOS: 0, EOS: 1}
    for symbol in _byte_symbols():
        vocab[symbol] = len(vocab)
    for symbol in _byte_symbols():
        vocab[symbol + "</w>"] = len(vocab)
    return vocab


VOCAB_SIZE = 2 + 2 * 256


def byte_level_tokenizer(model_max_length: int = 77):
    """A ``CLIPTokenizer`` over single bytes (vocabulary of ``VOCAB_SIZE``)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer(vocab=byte_vocab(), merges=[], model_max_length=model_max_length)
