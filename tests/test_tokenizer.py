"""Our CLIP tokenizer against transformers' CLIPTokenizer (the oracle), on the real CLIP vocabulary.

tests/data/clip_tokenizer/ holds CLIP's vocab.json and merges.txt, rebuilt from open_clip's
bpe_simple_vocab_16e6.txt.gz as OpenAI's SimpleTokenizer builds them (first 48,894 merges, 49,408 tokens), with
Karlo's tokenizer_config.json and special_tokens_map.json (pad "!", id 0).
"""

import json
import random
import re
import shutil
import unicodedata
from pathlib import Path

import pytest
from transformers import CLIPTokenizer

from dalle_cli.errors import CheckpointError, UsageError
from dalle_cli.tokenizer import BYTE_TO_UNICODE, Tokenizer, normalize, pre_tokenize
from recipes.shapes.bpe import learn_bpe, save_tokenizer_files

KARLO = Path(__file__).parent / "data" / "clip_tokenizer"
# openai/clip-vit-large-patch14's special_tokens_map.json: CLIP pads with its end-of-text token.
FLAGS = {"single_word": False, "lstrip": False, "rstrip": False, "normalized": True}
CLIP_SPECIAL_TOKENS_MAP = {
    "bos_token": {"content": "<|startoftext|>", **FLAGS},
    "eos_token": {"content": "<|endoftext|>", **FLAGS},
    "unk_token": {"content": "<|endoftext|>", **FLAGS},
    "pad_token": "<|endoftext|>",
}


def _copy_vocab(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(KARLO / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same vocabulary with CLIP's own special tokens: pad is `<|endoftext|>`."""
    folder = _copy_vocab(tmp_path_factory.mktemp("clip"))
    config = json.loads((KARLO / "tokenizer_config.json").read_text())
    config["pad_token"] = "<|endoftext|>"
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "special_tokens_map.json").write_text(json.dumps(CLIP_SPECIAL_TOKENS_MAP))
    return folder


@pytest.fixture(scope="module", params=["karlo", "clip"])
def pair(request: pytest.FixtureRequest, clip_folder: Path) -> tuple[Tokenizer, CLIPTokenizer]:
    """(ours, reference), both loaded from the same folder."""
    folder = KARLO if request.param == "karlo" else clip_folder
    return Tokenizer.from_folder(folder), CLIPTokenizer.from_pretrained(folder)


def reference_batch(reference: CLIPTokenizer, texts: list[str], max_length: int = 77) -> tuple[list, list]:
    out = reference(texts, padding="max_length", truncation=True, max_length=max_length)
    return out["input_ids"], out["attention_mask"]


HAND_WRITTEN = [
    "",
    " ",
    "\t\n  \r\n",
    "a photo of a cat",
    "A Photo Of A CAT",
    "an astronaut riding a horse on mars, trending on artstation, 4k, highly detailed",
    "café naïve Zürich façade crème brûlée jalapeño São Paulo Ångström",
    "cafe\u0301 nai\u0308ve (decomposed accents, NFC composes them)",
    "ΟΔΟΣ Σίσυφος ΣΟΦΟΣ",  # a capital sigma is lower-cased on its own: no final "ς"
    "İstanbul ıI straße STRASSE ẞ ﬁne ﬂour",
    "🐱 cat 🐶 dog 👍🏽 👨‍👩‍👧‍👦 🇫🇷 🏳️‍🌈 ❤️ ✨✨✨",
    "一只猫坐在垫子上 東京タワー 서울의 밤 ﾊﾝｶｸ",
    "قطة على السجادة مرحبا بالعالم",
    "חתול על השטיח",
    "बिल्ली चटाई पर",
    "Кошка на ковре, ЁЖИК",
    "!!! ??? ... ,,, --- ___ *** ### $$$ %%% &&& ((( ))) [[[ ]]] {{{ }}} ||| ~~~ ``` ''' \"\"\"",
    "hello!!! what?!? wow... ok;; fine:: (yes) [no] {maybe} <tag> a/b\\c",
    "3.14 1,000,000 2nd 3rd 21st 100% $9.99 -5 +7 1e-5 0x1F 007 12:30pm 2024-01-01",
    "Ⅻ ² ³ ½ ¾ ٣٤٥ ۱۲ १२३ ௧ 一二三 ①②③",
    "fish &amp; chips &lt;b&gt; &quot;quoted&quot; &#39;apos&#39; &nbsp;",
    "tabs\there\tand\t\tthere   many     spaces\n\nnew\nlines\r\nwindows",
    "\u00a0nbsp\u00a0\u2003em\u3000ideographic\u2028line\u2029para\x85nel\x1cfs\x1dgs\u200bzwsp",
    "it's don't we're they've I'm you'll he'd IT'S DON'T WE'RE",
    "it’s curly ‘quotes’ “double” 's 't 're 've 'm 'll 'd 'x ''s",
    "rock'n'roll o'clock ma'am y'all 'tis",
    "mIxEd CaSe WoRdS and CamelCase and snake_case and kebab-case",
    "a <|endoftext|> b <|startoftext|> c <|ENDOFTEXT|> d",
    "<|endoftext|><|endoftext|>",
    "<|startoftext|>",
    "x<|endoftext|>\u0338y",
    "pad marks! in the middle! of text!! ¡hola!",
    "emoji only 😀😃😄😁😆😅😂🤣",
    "zero\u200dwidth joiner and\u200cnon-joiner and \ufeffbom",
    "combining at start \u0301\u0302 and alone \u20dd",
    "ＦＵＬＬＷＩＤＴＨ ｌｅｔｔｅｒｓ １２３",
    "control\x00chars\x07here\x1b[0m",
    "\U0001d400\U0001d401 math bold 𝒜𝓑 script",
    "supercalifragilisticexpialidocious antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis",
    "a " * 100,
    "the quick brown fox jumps over the lazy dog " * 12,
    "🎉" * 60,
    "lorem ipsum dolor sit amet, consectetur adipiscing elit, " * 8 + "THE END",
]

FRAGMENTS = [
    "a", "small", "red", "circle", "in", "the", "top", "left", "photo", "of", "cat", "Dog", "HOUSE", "painting",
    "by", "Van", "Gogh", "oil", "on", "canvas", "4k", "8K", "hdr", "café", "naïve", "Zürich", "東京", "猫", "قطة",
    "🐱", "🔥", "👍🏽", "!!!", "?!", "...", ",", ";", "&amp;", "&lt;", "&gt;", "3.14", "1,000,000", "2nd", "50%",
    "it's", "don't", "they're", "we've", "I'm", "you'll", "he'd", "O'Neil", "'quoted'", "(", ")", "[x]", "—", "–",
    "\t", "\n", "  ", "\u00a0", "Ⅻ", "²", "½", "<|endoftext|>", "ΣΟΦΟΣ", "İ", "ß", "ﬁ", "e\u0301", "#hashtag",
    "@user", "http://example.com/a?b=c&d=e", "C++", "x86_64", "snake_case", "UPPER", "MiXeD",
]


def generated_prompts(count: int, seed: int) -> list[str]:
    """Random mixes of the fragments above, joined by assorted whitespace or nothing; some far past 77 tokens."""
    rng = random.Random(seed)
    joiners = [" ", " ", " ", "", "  ", "\t", "\n", " \r\n "]
    prompts = []
    for _ in range(count):
        length = rng.choice([1, 3, 8, 15, 30, 60, 120])
        prompts.append("".join(rng.choice(FRAGMENTS) + rng.choice(joiners) for _ in range(length)))
    return prompts


PROMPTS = HAND_WRITTEN + generated_prompts(220, seed=0)


def test_sanity_photo_of_a_cat(pair: tuple[Tokenizer, CLIPTokenizer]) -> None:
    ours, reference = pair
    encoding = ours.encode(["a photo of a cat"])
    assert encoding.input_ids[0][:7] == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert encoding.input_ids[0][7:] == [reference.pad_token_id] * 70
    assert encoding.attention_mask[0] == [1] * 7 + [0] * 70
    assert encoding.overflow == [""]
    assert ours.pad_id == reference.pad_token_id == (0 if reference.pad_token == "!" else 49407)


def test_ids_and_masks_match_transformers(pair: tuple[Tokenizer, CLIPTokenizer]) -> None:
    ours, reference = pair
    assert len(PROMPTS) >= 250
    assert sum(len(reference(p)["input_ids"]) > 77 for p in PROMPTS) >= 40  # plenty of prompts get truncated
    encoding = ours.encode(PROMPTS)
    ids, masks = reference_batch(reference, PROMPTS)
    for prompt, *mine, their_ids, their_mask in zip(PROMPTS, encoding.input_ids, encoding.attention_mask, ids, masks):
        assert mine == [their_ids, their_mask], prompt
    assert [ours.count_tokens(p) for p in PROMPTS] == [len(reference(p)["input_ids"]) for p in PROMPTS]


def test_every_character_splits_as_in_transformers() -> None:
    """Whitespace, letter and number classes, lower-casing and NFC against the reference's normalizer and
    pre-tokenizer, for every character Python's Unicode tables assign in the alphabetic, symbol and supplementary
    blocks, and one in 13 of the large ideograph blocks."""
    reference = CLIPTokenizer.from_pretrained(KARLO).backend_tokenizer
    code_points = [
        c
        for c in range(0x40000)
        if c < 0x3400 or 0xA000 <= c < 0xAC00 or 0xD7B0 <= c < 0x12000 or 0x1D000 <= c < 0x1F000 or c % 13 == 0
    ]
    chars = [chr(c) for c in code_points if unicodedata.category(chr(c)) not in ("Cn", "Cs", "Co")]
    assert len(chars) > 30_000
    texts = [f"{c} A{c}{c}b 1{c}'s.{c}\t{c.upper()}" for c in chars]
    mismatches = []
    for text in texts:
        normalized = reference.normalizer.normalize_str(text)
        theirs = [word for word, _ in reference.pre_tokenizer.pre_tokenize_str(normalized)]
        mine = ["".join(BYTE_TO_UNICODE[b] for b in word.encode("utf-8")) for word, _ in pre_tokenize(normalize(text))]
        if mine != theirs:
            mismatches.append(text)
    assert mismatches == []


def test_model_max_length_from_config(tmp_path: Path) -> None:
    folder = _copy_vocab(tmp_path / "short")
    shutil.copy(KARLO / "special_tokens_map.json", folder)
    config = json.loads((KARLO / "tokenizer_config.json").read_text())
    config["model_max_length"] = 16
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    ours, reference = Tokenizer.from_folder(folder), CLIPTokenizer.from_pretrained(folder)
    encoding = ours.encode(PROMPTS[:60])
    assert (encoding.input_ids, encoding.attention_mask) == reference_batch(reference, PROMPTS[:60], 16)
    assert all(len(row) == 16 for row in encoding.input_ids)


def test_overflow_is_the_text_cut_off(pair: tuple[Tokenizer, CLIPTokenizer]) -> None:
    ours, reference = pair
    prompts = [p for p in PROMPTS if len(reference(p)["input_ids"]) > 77]
    for prompt, overflow in zip(prompts, ours.encode(prompts).overflow):
        cut = reference(prompt)["input_ids"][76:-1]  # past bos + 75 kept tokens, before eos
        # The reference decodes a space after every word where ours keeps the normalized text's own spacing, and
        # a cut inside a character decodes to U+FFFD where ours gives back the whole character.
        decoded = reference.decode(cut).replace(" ", "")
        mine = overflow.replace(" ", "")
        assert mine and (mine == decoded or mine[1:] == decoded.lstrip("\ufffd") != decoded), prompt

    text = "Hello,   World " + " ".join(["cat"] * 72) + " a  Dog, Sitting."
    assert ours.count_tokens(text) == 82 == len(reference(text)["input_ids"])
    assert ours.encode([text]).overflow == ["a dog, sitting."]
    full = " ".join(["cat"] * 75)
    assert ours.encode([full, full + " dog", "a photo of a cat"]).overflow == ["", "dog", ""]
    # Each Greek letter takes 2 byte tokens here: the cut falls inside "ο", which the overflow gives back whole.
    greek = ours.encode(["cat " * 74 + "ΟΔΟΣ"])
    assert reference.decode(greek.input_ids[0][75:76]) == "\ufffd"
    assert greek.overflow == ["οδοσ"]


def caption_corpus(count: int, seed: int) -> list[str]:
    """Captions like the tiny model's training data: "a small red circle in the top left"."""
    rng = random.Random(seed)
    sizes, colors = ["small", "large", "tiny", "big"], ["red", "green", "blue", "yellow", "purple", "orange"]
    shapes, places = ["circle", "square", "triangle", "star"], ["top left", "top right", "bottom left", "center"]
    return [
        f"a {rng.choice(sizes)} {rng.choice(colors)} {rng.choice(shapes)} in the {rng.choice(places)}"
        for _ in range(count)
    ]


def naive_learn_merges(corpus: list[str], count: int) -> list[tuple[str, str]]:
    """Textbook BPE: recount every pair, merge the most frequent (ties: the smallest pair), repeat."""
    words: dict[tuple[str, ...], int] = {}
    for text in corpus:
        for word, _ in pre_tokenize(normalize(text)):
            symbols = [BYTE_TO_UNICODE[b] for b in word.encode("utf-8")]
            symbols[-1] += "</w>"
            words[tuple(symbols)] = words.get(tuple(symbols), 0) + 1
    merges = []
    while len(merges) < count:
        pairs: dict[tuple[str, str], int] = {}
        for symbols, n in words.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] = pairs.get(pair, 0) + n
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        merged = {}
        for symbols, n in words.items():
            out, i = [], 0
            while i < len(symbols):
                if symbols[i : i + 2] == best:
                    out.append(best[0] + best[1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            merged[tuple(out)] = n
        words = merged
    return merges


def test_learn_bpe_builds_a_clip_style_vocabulary() -> None:
    corpus = caption_corpus(300, seed=1) + ["Ünïcödé 🐱 and 123 numbers, too!"] * 3
    vocab, merges = learn_bpe(corpus, 5000)
    tokens = sorted(vocab, key=vocab.get)
    assert sorted(vocab.values()) == list(range(len(vocab)))
    assert tokens[:256] == list(BYTE_TO_UNICODE.values())
    assert tokens[256:512] == [c + "</w>" for c in BYTE_TO_UNICODE.values()]
    assert tokens[-2:] == ["<|startoftext|>", "<|endoftext|>"]
    assert tokens[512:-2] == list(dict.fromkeys(a + b for a, b in merges))
    assert len(vocab) < 5000  # this corpus runs out of pairs first
    assert merges == naive_learn_merges(corpus, 10_000)
    vocab, merges = learn_bpe(corpus, 540)
    assert len(vocab) == 540 and merges == naive_learn_merges(corpus, len(merges))
    with pytest.raises(UsageError):
        learn_bpe(corpus, 100)


@pytest.mark.parametrize("pad_token", ["!", "<|endoftext|>"])
def test_learned_tokenizer_round_trips_through_transformers(tmp_path: Path, pad_token: str) -> None:
    corpus = caption_corpus(400, seed=2)
    vocab, merges = learn_bpe(corpus, 640)
    save_tokenizer_files(tmp_path, vocab, merges, pad_token=pad_token, model_max_length=24)
    assert (tmp_path / "merges.txt").read_text(encoding="utf-8").splitlines()[0] == "#version: 0.2"
    assert json.loads((tmp_path / "special_tokens_map.json").read_text())["pad_token"] == pad_token
    ours, reference = Tokenizer.from_folder(tmp_path), CLIPTokenizer.from_pretrained(tmp_path)
    assert reference.pad_token == pad_token and reference.model_max_length == 24 == ours.model_max_length
    texts = corpus[:50] + caption_corpus(50, seed=3) + PROMPTS[:60] + ["A SMALL red circle!! in the top-left, twice"]
    encoding = ours.encode(texts)
    assert (encoding.input_ids, encoding.attention_mask) == reference_batch(reference, texts, 24)
    assert len(ours.encode(["a small red circle in the top left"]).input_ids[0]) == 24
    assert ours.count_tokens("a small red circle in the top left") == 10  # every word of the corpus is one token


LEGACY_PAD = {"__type": "AddedToken", "content": "<|endoftext|>", **FLAGS}
LEGACY_BOS = {"__type": "AddedToken", "content": "<|startoftext|>", **FLAGS, "normalized": False}


@pytest.mark.parametrize(
    ("config", "special_tokens_map"),
    [
        ({"pad_token": "!", "bos_token": "<|startoftext|>"}, None),
        ({"pad_token": LEGACY_PAD, "bos_token": LEGACY_BOS}, None),
        (
            {"pad_token": "!"},
            {"pad_token": {"content": "<|endoftext|>"}, "eos_token": CLIP_SPECIAL_TOKENS_MAP["eos_token"]},
        ),
        ({"pad_token": LEGACY_PAD}, {"bos_token": "<|startoftext|>", "unk_token": {"content": "!"}}),
    ],
)
def test_special_token_formats(tmp_path: Path, config: dict, special_tokens_map: dict | None) -> None:
    """Special tokens as plain strings, as legacy AddedToken dicts (tokenizer_config.json) and as {"content": ...}
    dicts (special_tokens_map.json, which wins over the config); the rest left to the defaults."""
    folder = _copy_vocab(tmp_path / "tokenizer")
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": 20}))
    if special_tokens_map is not None:
        (folder / "special_tokens_map.json").write_text(json.dumps(special_tokens_map))
    ours, reference = Tokenizer.from_folder(folder), CLIPTokenizer.from_pretrained(folder)
    assert (ours.pad_id, ours.bos_id, ours.eos_id, ours.unk_id) == (
        reference.pad_token_id, reference.bos_token_id, reference.eos_token_id, reference.unk_token_id
    )
    texts = ["Hi! <|startoftext|> <|ENDOFTEXT|> <|STARTOFTEXT|> x<|endoftext|>\u0338", *PROMPTS[:40]]
    encoding = ours.encode(texts)
    assert (encoding.input_ids, encoding.attention_mask) == reference_batch(reference, texts, 20)


def test_repeated_merge_keeps_its_last_rank(tmp_path: Path) -> None:
    vocab, _ = learn_bpe([], 600)
    for token in ("ab", "bc</w>"):
        vocab[token] = len(vocab)
    save_tokenizer_files(tmp_path, vocab, [("b", "c</w>"), ("a", "b"), ("b", "c</w>")])
    ours, reference = Tokenizer.from_folder(tmp_path), CLIPTokenizer.from_pretrained(tmp_path)
    assert reference.convert_ids_to_tokens(reference("abc")["input_ids"][1:-1]) == ["ab", "c</w>"]
    assert ours.encode(["abc abcabc"]).input_ids == reference_batch(reference, ["abc abcabc"])[0]


def test_defaults_without_config_files(tmp_path: Path) -> None:
    folder = _copy_vocab(tmp_path / "bare")
    ours = Tokenizer.from_folder(folder)
    assert (ours.bos_id, ours.eos_id, ours.unk_id, ours.pad_id) == (49406, 49407, 49407, 49407)
    assert ours.model_max_length == 77


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("vocab.json", None, "vocab.json"),
        ("merges.txt", None, "merges.txt"),
        ("vocab.json", "{not json", "vocab.json"),
        ("vocab.json", '{"a": "one"}', "vocab.json"),
        ("merges.txt", "#version: 0.2\ni n\nt h e\n", "merges.txt, line 3"),
        ("merges.txt", "#version: 0.2\nxyzzy plugh\n", "not in the vocabulary"),
        ("tokenizer_config.json", "[]", "tokenizer_config.json"),
        ("tokenizer_config.json", '{"pad_token": 5}', "tokenizer_config.json"),
        ("special_tokens_map.json", '{"pad_token": "<pad>"}', "<pad>"),
        ("tokenizer_config.json", '{"do_lower_case": false}', "do_lower_case"),
        ("tokenizer_config.json", '{"model_max_length": 1e30}', "model_max_length"),
        ("special_tokens_map.json", "{", "special_tokens_map.json"),
    ],
)
def test_bad_folders_raise_checkpoint_error(tmp_path: Path, name: str, content: str | None, message: str) -> None:
    folder = _copy_vocab(tmp_path / "tokenizer")
    for extra in ("tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(KARLO / extra, folder / extra)
    if content is None:
        (folder / name).unlink()
    else:
        (folder / name).write_text(content, encoding="utf-8")
    with pytest.raises(CheckpointError, match=re.escape(message)):
        Tokenizer.from_folder(folder)


def test_bpe_results_are_cached() -> None:
    ours = Tokenizer.from_folder(KARLO)
    ours.encode(["a photo of a cat"] * 3)
    info = ours._bpe.cache_info()
    assert info.misses == 4 and info.hits == 11
