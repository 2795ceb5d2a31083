"""Words ↔ tokens for the byte-level and a BPE CLIP tokenizer, prompt alignment, blend words."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPTokenizer

from bdia.prompts import align, blend_words, check_words, kept_nouns, phrase_noun, word_spans, words
from bdia.tokenizer import byte_level_tokenizer, byte_vocab


@pytest.fixture(scope="module")
def byte_tok():
    return byte_level_tokenizer()


@pytest.fixture(scope="module")
def bpe_tok():
    """A real BPE CLIPTokenizer built offline: merges make "red" and "circle" single tokens, "blue" stays bytes."""
    vocab = byte_vocab()
    merges = [("r", "e"), ("re", "d</w>"), ("c", "i"), ("ci", "r"), ("cir", "c"), ("circ", "l"), ("circl", "e</w>")]
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def test_byte_level_spans_follow_the_tokens(byte_tok):
    ids = byte_tok("a red circle")["input_ids"]
    tokens = byte_tok.convert_ids_to_tokens(ids)
    assert tokens == ["<|startoftext|>", "a</w>", "r", "e", "d</w>", "c", "i", "r", "c", "l", "e</w>", "<|endoftext|>"]
    assert word_spans(byte_tok, "a red circle") == [range(1, 2), range(2, 5), range(5, 11)]


def test_bpe_spans_and_punctuation(bpe_tok):
    tokens = bpe_tok.convert_ids_to_tokens(bpe_tok("a red circle")["input_ids"])
    assert tokens[1:4] == ["a</w>", "red</w>", "circle</w>"]
    assert word_spans(bpe_tok, "a red circle") == [range(1, 2), range(2, 3), range(3, 4)]
    assert word_spans(bpe_tok, "a blue circle") == [range(1, 2), range(2, 6), range(6, 7)]
    # "Red," is two tokens (red</w> and ","); the spans still add up to the prompt's tokens.
    spans = word_spans(bpe_tok, "A  Red, circle")
    assert words("A  Red, circle") == ["a", "red,", "circle"]
    assert spans[-1].stop == len(bpe_tok("A  Red, circle")["input_ids"]) - 1


def test_spans_are_cut_by_truncation(byte_tok):
    spans = word_spans(byte_tok, " ".join(["circle"] * 20))
    assert max(s.stop for s in spans) <= 76 and spans[-1] == range(76, 76)


@pytest.mark.parametrize("tok", ["byte_tok", "bpe_tok"])
def test_word_swap_maps_equal_words_token_to_token(tok, request):
    tok = request.getfixturevalue(tok)
    a = align(tok, "a red circle on a grey background", "a blue circle on a grey background")
    assert a.source_changed == [1] and a.target_changed == [1]
    s, t = a.source_spans, a.target_spans
    for i in (0, 2, 3, 6):  # unchanged words: identity on their tokens
        for x, y in zip(s[i], t[i], strict=True):
            assert a.mapper[x, y] == 1 and a.alphas[y] == 1
    # The swapped word takes the source word's attention, its mass spread over its own tokens.
    block = a.mapper[s[1].start : s[1].stop, t[1].start : t[1].stop]
    assert torch.allclose(block.sum(), torch.tensor(float(len(s[1]))))
    assert all(a.alphas[y] == 1 for y in t[1])


def test_refine_aligns_prompts_of_different_lengths(byte_tok):
    source, target = "a red circle on a grey background", "a blue star and a red circle on a grey background"
    a = align(byte_tok, source, target)
    assert [a.target_words[i] for i in a.target_changed] == ["a", "blue", "star", "and"]
    assert a.source_changed == []
    s, t = a.source_spans, a.target_spans
    # "red circle" moved four words right: its tokens still take the source's "red circle".
    for x, y in zip(s[2], t[6], strict=True):
        assert a.mapper[x, y] == 1
    # New words keep their own attention; the EOS/padding tail is aligned from each prompt's EOS.
    assert all(a.alphas[y] == 0 for y in t[2])
    s_eos, t_eos = s[-1].stop, t[-1].stop
    assert a.mapper[s_eos, t_eos] == 1 and a.mapper[s_eos + 1, t_eos + 1] == 1
    assert blend_words(a.target_words, a.target_changed) == [2]  # star: the noun (not the articles, not "and")


def test_deleted_words_are_those_dropped_without_a_replacement(byte_tok):
    a = align(byte_tok, "a red circle and a blue square on a grey background", "a red circle on a grey background")
    assert [a.source_words[i] for i in a.source_deleted] == ["and", "a", "blue", "square"]
    assert blend_words(a.source_words, a.source_deleted) == [6]  # square
    swap = align(byte_tok, "a red circle", "a blue circle")
    assert swap.source_deleted == [] and swap.source_changed == [1]


def test_kept_nouns_are_those_of_unchanged_phrases():
    w = words("a red circle and a blue square on a grey background")
    assert kept_nouns(w, [1]) == [6, 10]  # red changed: square and background are kept
    assert kept_nouns(w, [9]) == [2, 6]  # a background edit keeps both shapes


def test_a_changed_adjective_brings_its_noun():
    w = words("a red circle and a blue square on a grey background")
    assert phrase_noun(w, 1) == 2 and phrase_noun(w, 5) == 6 and phrase_noun(w, 9) == 10
    assert phrase_noun(w, 0) is None
    assert blend_words(w, [5]) == [6]


def test_check_words_names_the_missing_word():
    assert check_words("a red circle", "a blue circle", ["red", "blue circle"], {"blue": 2}) is None
    assert check_words("a red circle", "a blue circle", ["star"], None) == (
        "blend word 'star' is not in the source or the edit prompt"
    )
    assert (
        check_words("a red circle", "a blue circle", None, {"red": 2})
        == "reweight word 'red' is not in the edit prompt"
    )
