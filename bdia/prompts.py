"""Words and tokens of prompts, and the alignment of an edit prompt with its source (docs/editing.md).

Prompt-to-Prompt edits act on words, the network attends to tokens. ``word_spans`` finds the token
positions of every word for any ``CLIPTokenizer`` — the byte-level one bundled here (one token per
byte, the word's last byte carries ``</w>``) and CLIP's BPE alike — by tokenizing word by word: CLIP
pre-tokenizes on whitespace before its byte-pair merges, so a prompt's tokens are its words' tokens
in order. ``align`` maps the edit prompt's tokens onto the source's (word swap and refine), and
``blend_words`` picks the words whose attention marks the region that may change: the noun of the
phrase each changed word belongs to (the text encoder is causal, so an adjective reaches the image
through the noun after it). Torch is imported by ``align`` only, so the API can check words (``check_words``).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

#: Words that end a noun phrase (and the articles that open one): a phrase's noun is its last other word.
_BREAKS = "a an the and or but on in at of with without to from by for under over above below beside near next "
PHRASE_BREAKS = frozenset((_BREAKS + "behind between into onto , ; . is are").split())


def words(prompt: str) -> list[str]:
    """The prompt's words, as CLIP's tokenizer sees them: lower case, split on whitespace."""
    return prompt.lower().split()


def word_spans(tokenizer: Any, prompt: str) -> list[range]:
    """The token positions (BOS = 0) of each word of ``prompt``; words cut by truncation get what is left."""
    limit = int(tokenizer.model_max_length) - 1  # the last position is always EOS
    spans, position = [], 1
    for word in words(prompt):
        count = len(tokenizer(word, add_special_tokens=False)["input_ids"])
        spans.append(range(min(position, limit), min(position + count, limit)))
        position += count
    return spans


def token_count(tokenizer: Any, prompt: str) -> int:
    """Tokens of ``prompt`` with BOS and EOS, after truncation."""
    ids = tokenizer(prompt, truncation=True, max_length=tokenizer.model_max_length)["input_ids"]
    return len(ids)


@dataclass(frozen=True)
class Alignment:
    """How the edit prompt's tokens take the source's attention (Prompt-to-Prompt).

    ``mapper`` [L, L]: target token t receives Σ_s source_probs[s]·mapper[s, t]; ``alphas`` [L]: 1 where
    a target token has a source counterpart (its attention is injected), 0 where it is new.
    ``source_changed``/``target_changed``: indices of the words that differ; ``source_deleted``: the source
    words the edit drops without a replacement.
    """

    mapper: torch.Tensor
    alphas: torch.Tensor
    source_words: list[str]
    target_words: list[str]
    source_spans: list[range]
    target_spans: list[range]
    source_changed: list[int]
    target_changed: list[int]
    source_deleted: list[int]


def _map_block(mapper: torch.Tensor, alphas: torch.Tensor, src: list[range], tgt: list[range]) -> None:
    """Word i of ``src`` → word i of ``tgt``: token by token when the counts agree, else spread evenly."""
    for s, t in zip(src, tgt, strict=True):
        if len(s) == len(t):
            for a, b in zip(s, t, strict=True):
                mapper[a, b] = 1.0
        elif len(s) and len(t):
            mapper[s.start : s.stop, t.start : t.stop] = 1.0 / len(t)
        for b in t:
            alphas[b] = 1.0


def align(tokenizer: Any, source: str, target: str) -> Alignment:
    """Align ``target`` with ``source`` word by word (difflib): equal words map token to token, a block of
    replaced words of equal length maps word to word (a word swap), and other words are new (refine).
    BOS maps to BOS and the EOS/padding tail of the target to the source's tail."""
    import torch

    length = int(tokenizer.model_max_length)
    sw, tw = words(source), words(target)
    ss, ts = word_spans(tokenizer, source), word_spans(tokenizer, target)
    mapper = torch.zeros(length, length, dtype=torch.float32)
    alphas = torch.zeros(length, dtype=torch.float32)
    mapper[0, 0] = alphas[0] = 1.0
    source_changed: list[int] = []
    target_changed: list[int] = []
    source_deleted: list[int] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=sw, b=tw, autojunk=False).get_opcodes():
        if op == "equal" or (op == "replace" and i2 - i1 == j2 - j1):
            _map_block(mapper, alphas, ss[i1:i2], ts[j1:j2])
        if op != "equal":
            source_changed += range(i1, i2)
            target_changed += range(j1, j2)
        if op == "delete":
            source_deleted += range(i1, i2)
    # The tail: EOS and padding, aligned from each prompt's EOS.
    s_end = token_count(tokenizer, source) - 1
    t_end = token_count(tokenizer, target) - 1
    for t in range(t_end, length):
        mapper[min(s_end + t - t_end, length - 1), t] = 1.0
        alphas[t] = 1.0
    return Alignment(mapper, alphas, sw, tw, ss, ts, source_changed, target_changed, source_deleted)


def phrase_noun(word_list: list[str], index: int) -> int | None:
    """The noun of the phrase word ``index`` belongs to: the last word before the next phrase break."""
    if _bare(word_list[index]) in PHRASE_BREAKS:
        return None
    end = index
    while end + 1 < len(word_list) and _bare(word_list[end + 1]) not in PHRASE_BREAKS:
        end += 1
    return end


def _bare(word: str) -> str:
    return re.sub(r"[^\w]", "", word) or word


def blend_words(word_list: list[str], changed: list[int]) -> list[int]:
    """The nouns of the changed words' phrases (a changed noun is its own), indices sorted without duplicates.

    Only nouns: an adjective's attention spreads over the whole image (measured: docs/editing.md); with a
    causal text encoder it reaches the image through the noun after it."""
    return sorted({noun for i in changed if (noun := phrase_noun(word_list, i)) is not None})


def kept_nouns(word_list: list[str], changed: list[int]) -> list[int]:
    """The nouns of the phrases with no changed word (the objects an edit keeps), indices sorted."""
    nouns = {phrase_noun(word_list, i) for i in range(len(word_list))}
    return sorted(n for n in nouns - {phrase_noun(word_list, i) for i in changed} if n is not None)


def find_words(word_list: list[str], phrase: str) -> list[int]:
    """Indices of every occurrence of ``phrase`` (one or more words) in ``word_list``."""
    needle = words(phrase)
    n = len(needle)
    hits = [i for i in range(len(word_list) - n + 1) if word_list[i : i + n] == needle]
    return sorted({i + k for i in hits for k in range(n)})


def tokens_of(spans: list[range], indices: list[int]) -> list[int]:
    """The token positions of the words at ``indices``."""
    return sorted({t for i in indices for t in spans[i]})


__all__ = [
    "Alignment",
    "align",
    "blend_words",
    "check_words",
    "find_words",
    "kept_nouns",
    "phrase_noun",
    "token_count",
    "tokens_of",
    "word_spans",
    "words",
]


def check_words(source: str, target: str, blend: list[str] | None, reweight: dict[str, float] | None) -> str | None:
    """Why ``blend`` words (each in either prompt) or ``reweight`` words (each in the edit prompt) do not fit
    the prompts, as one line; None when they do."""
    sw, tw = words(source), words(target)
    for word in blend or []:
        if not find_words(sw, word) and not find_words(tw, word):
            return f"blend word {word!r} is not in the source or the edit prompt"
    for word in reweight or {}:
        if not find_words(tw, word):
            return f"reweight word {word!r} is not in the edit prompt"
    return None
