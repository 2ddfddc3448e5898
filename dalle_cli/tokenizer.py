"""CLIP's byte-level BPE tokenizer in plain Python, giving the same ids as transformers' `CLIPTokenizer`.

The text of a prompt goes through the steps of the reference (transformers 5, backed by `tokenizers`):
1. special tokens stored with `normalized: false` (a plain-string pad token such as Karlo's "!") are cut out of
   the raw text;
2. each remaining piece is normalized: Unicode NFC, every run of whitespace becomes one space, then each
   character is lower-cased on its own (so a final capital sigma becomes "σ", never "ς"); no ftfy, no accent
   stripping;
3. the other special tokens (`<|startoftext|>`, `<|endoftext|>`) are cut out of the normalized text;
4. the rest is split into words: the contractions 's 't 're 've 'm 'll 'd, runs of letters (Unicode L*),
   single digits (Unicode N*), and runs of anything else that is not whitespace; whitespace is dropped;
5. each word's UTF-8 bytes become printable characters (`BYTE_TO_UNICODE`), its last one gets the "</w>"
   suffix, and BPE merges the pair of lowest rank until none applies (Sennrich et al. 2016, "Neural Machine
   Translation of Rare Words with Subword Units").
Every sequence is then wrapped as [bos] + tokens + [eos], cut to `model_max_length` and padded with the pad id.

Character classes, case mappings and NFC come from Python's `unicodedata` (Unicode 14 on Python 3.11) where the
reference uses newer tables: ids can differ only on code points assigned after that version, and on ~50 rare
combining marks whose NFC reordering the reference's older normalization tables do not know.
"""

import functools
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .configs import read_json
from .errors import CheckpointError


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map of the 256 byte values to printable characters: printable Latin-1 bytes map to
    themselves, the others to code points 256, 257, ... in byte order."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in kept]
    return {b: chr(c) for b, c in zip(kept + others, kept + [256 + i for i in range(len(others))])}


BYTE_TO_UNICODE: dict[int, str] = _bytes_to_unicode()
END_OF_WORD = "</w>"
BOS_TOKEN, EOS_TOKEN = "<|startoftext|>", "<|endoftext|>"
# Unicode's White_Space property: what the reference's `\s` (Oniguruma) matches. Python's `\s` would also take
# the separators U+001C..U+001F, which CLIP keeps as symbols.
_WHITESPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_WHITESPACE_RUNS = re.compile(f"[{_WHITESPACE}]+")


def _letter_and_number_classes() -> tuple[str, str]:
    """Regex character class bodies for Unicode letters (categories L*) and numbers (N*)."""
    ranges: dict[str, list[list[int]]] = {"L": [], "N": []}
    for cp in range(0x40000):  # letters and numbers live in planes 0-3; planes 4-16 hold none
        spans = ranges.get(unicodedata.category(chr(cp))[0])
        if spans is None:
            continue
        if spans and spans[-1][1] == cp - 1:
            spans[-1][1] = cp
        else:
            spans.append([cp, cp])
    letters, numbers = ("".join(f"\\U{lo:08x}-\\U{hi:08x}" for lo, hi in ranges[k]) for k in "LN")
    return letters, numbers


@functools.cache
def _word_pattern() -> re.Pattern[str]:
    """CLIP's split `'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+`, with the Unicode classes
    spelled out for the stdlib `re` (built once, on first use: scanning the code points takes ~0.1 s)."""
    letters, numbers = _letter_and_number_classes()
    return re.compile(f"'s|'t|'re|'ve|'m|'ll|'d|[{letters}]+|[{numbers}]|[^{_WHITESPACE}{letters}{numbers}]+")


def normalize(text: str) -> str:
    """The reference normalizer: NFC, whitespace runs to one space, then per-character lower-casing."""
    text = _WHITESPACE_RUNS.sub(" ", unicodedata.normalize("NFC", text))
    return "".join(c.lower() for c in text)


def pre_tokenize(normalized: str) -> list[tuple[str, int]]:
    """Split normalized text into CLIP's words, each with its character offset in `normalized`."""
    return [(m.group(), m.start()) for m in _word_pattern().finditer(normalized)]


def _special_pattern(specials: set[str]) -> re.Pattern[str] | None:
    """A pattern finding special tokens leftmost first, then longest first (as the reference's Aho-Corasick)."""
    if not specials:
        return None
    return re.compile("|".join(re.escape(s) for s in sorted(specials, key=lambda s: (-len(s), s))))


def _split_on(text: str, specials: re.Pattern[str] | None) -> list[tuple[str, bool]]:
    """Cut `text` at every special token: [(piece, is_special), ...] in order, empty pieces left out."""
    pieces: list[tuple[str, bool]] = []
    start = 0
    for m in specials.finditer(text) if specials else ():
        if m.start() > start:
            pieces.append((text[start : m.start()], False))
        pieces.append((m.group(), True))
        start = m.end()
    if start < len(text):
        pieces.append((text[start:], False))
    return pieces


def word_symbols(word: str) -> tuple[str, ...]:
    """A word as BPE starts it: one byte-character per UTF-8 byte, the last one carrying the "</w>" suffix."""
    chars = [BYTE_TO_UNICODE[b] for b in word.encode("utf-8")]
    chars[-1] += END_OF_WORD
    return tuple(chars)


def merge_pair(symbols: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    """Replace every occurrence of `pair` in `symbols`, left to right, by the joined symbol."""
    merged: list[str] = []
    i = 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            merged.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            merged.append(symbols[i])
            i += 1
    return tuple(merged)


@dataclass
class Encoding:
    """A batch of tokenized prompts, padded and cut to `model_max_length`.

    `overflow[i]` is the normalized text of prompt i that truncation cut off ("" when nothing was cut)."""

    input_ids: list[list[int]]
    attention_mask: list[list[int]]
    overflow: list[str]


def _token_content(value: Any, source: str) -> tuple[str, bool]:
    """A special token from a config file, given as a string or an AddedToken dict: (content, normalized).
    As in transformers, a plain string is matched on the raw text and a dict by default too."""
    if isinstance(value, str):
        return value, False
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"], bool(value.get("normalized", False))
    raise CheckpointError(f"{source}: a special token must be a string or a dict with a 'content', got {value!r}")


class Tokenizer:
    """CLIP's tokenizer: `encode` gives exactly the ids and attention mask of transformers'
    `CLIPTokenizer(texts, padding="max_length", truncation=True, max_length=model_max_length)`."""

    def __init__(
        self,
        vocab: dict[str, int],
        merges: list[tuple[str, str]],
        special_tokens: dict[str, tuple[str, bool]],
        model_max_length: int = 77,
    ) -> None:
        """`special_tokens` maps "bos_token", "eos_token", "unk_token" and "pad_token" to (content, normalized);
        every content and every merged pair must be in `vocab`."""
        for content, _ in special_tokens.values():
            if content not in vocab:
                raise CheckpointError(f"special token {content!r} is not in the vocabulary")
        for a, b in merges:
            if a + b not in vocab:
                raise CheckpointError(f"merge {a!r} {b!r} gives {a + b!r}, which is not in the vocabulary")
        if not isinstance(model_max_length, int) or model_max_length < 3:
            raise CheckpointError(f"model_max_length must be an integer of at least 3, got {model_max_length!r}")
        self.vocab = vocab
        # A pair listed twice takes its later rank, as in `tokenizers`.
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.model_max_length = model_max_length
        roles = ("bos_token", "eos_token", "unk_token", "pad_token")
        self.bos_id, self.eos_id, self.unk_id, self.pad_id = (vocab[special_tokens[role][0]] for role in roles)
        # A content listed twice (CLIP's eos and pad) keeps the flag of the later role, as transformers adds them
        # in the order bos, eos, unk, pad.
        flags = {special_tokens[role][0]: special_tokens[role][1] for role in roles}
        self.raw_specials = _special_pattern({c for c, normalized in flags.items() if not normalized})
        self.normalized_specials = _special_pattern({c for c, normalized in flags.items() if normalized})
        self._bpe = functools.lru_cache(maxsize=1 << 16)(self._bpe_uncached)

    @classmethod
    def from_folder(cls, folder: Path) -> "Tokenizer":
        """Load vocab.json and merges.txt, plus special tokens, `do_lower_case` and `model_max_length` from
        tokenizer_config.json and special_tokens_map.json (both optional; the map wins, as in transformers,
        unless the config lists `added_tokens_decoder`; without a `model_max_length`, CLIP's 77 applies).
        Missing or malformed files raise `CheckpointError`, and so does `do_lower_case: false`, which
        transformers' CLIPTokenizer would silently ignore (it always lower-cases)."""
        folder = Path(folder)
        vocab = read_json(folder / "vocab.json")
        if not all(isinstance(k, str) and isinstance(v, int) for k, v in vocab.items()):
            raise CheckpointError(f"{folder / 'vocab.json'} must map token strings to integer ids")
        merges_path = folder / "merges.txt"
        try:
            lines = merges_path.read_text(encoding="utf-8").split("\n")
        except (OSError, UnicodeDecodeError) as e:
            raise CheckpointError(f"cannot read {merges_path}: {e}") from None
        merges: list[tuple[str, str]] = []
        for number, line in enumerate((line.removesuffix("\r") for line in lines), start=1):
            if line.startswith("#version") or not line:
                continue
            parts = line.split(" ")
            if len(parts) != 2:
                raise CheckpointError(f"{merges_path}, line {number}: expected two symbols, got {line!r}")
            merges.append((parts[0], parts[1]))

        config_path, map_path = folder / "tokenizer_config.json", folder / "special_tokens_map.json"
        config = read_json(config_path) if config_path.exists() else {}
        tokens = {  # transformers' defaults, plain strings
            "bos_token": (BOS_TOKEN, False),
            "eos_token": (EOS_TOKEN, False),
            "unk_token": (EOS_TOKEN, False),
            "pad_token": (EOS_TOKEN, False),
        }
        sources = [(config, config_path)]
        if map_path.exists() and "added_tokens_decoder" not in config:
            sources.append((read_json(map_path), map_path))
        for data, path in sources:
            for key in tokens:
                if data.get(key) is not None:
                    tokens[key] = _token_content(data[key], str(path))
        if config.get("do_lower_case", True) is not True:
            raise CheckpointError(f"{config_path}: do_lower_case must be true (CLIP's tokenizer always lower-cases)")
        try:
            return cls(vocab, merges, tokens, config.get("model_max_length", 77))
        except CheckpointError as e:
            raise CheckpointError(f"tokenizer in {folder}: {e}") from None

    def _bpe_uncached(self, word: str) -> tuple[tuple[int, int], ...]:
        """(id, byte count) of each BPE token of one pre-tokenized word, lowest-rank pair merged first."""
        symbols = word_symbols(word)
        while len(symbols) > 1:
            pair = min(zip(symbols, symbols[1:]), key=lambda p: self.ranks.get(p, len(self.ranks)))
            if pair not in self.ranks:
                break
            symbols = merge_pair(symbols, pair)
        return tuple((self.vocab.get(s, self.unk_id), len(s.removesuffix(END_OF_WORD))) for s in symbols)

    def _tokenize(self, text: str) -> tuple[list[int], list[int], str]:
        """(ids, offsets, normalized text) of one prompt, without bos/eos: `offsets[k]` is where the text from
        token k on begins in the normalized text (a token that starts inside a character counts from it)."""
        ids: list[int] = []
        offsets: list[int] = []
        shown = ""
        for raw_piece, raw_special in _split_on(text, self.raw_specials):
            pieces = [(raw_piece, True)] if raw_special else _split_on(normalize(raw_piece), self.normalized_specials)
            for piece, special in pieces:
                if special:
                    ids.append(self.vocab[piece])
                    offsets.append(len(shown))
                else:
                    for word, start in pre_tokenize(piece):
                        word_bytes = word.encode("utf-8")
                        at = 0
                        for token_id, size in self._bpe(word):
                            head = at
                            while head > 0 and word_bytes[head] & 0xC0 == 0x80:  # back to a character start
                                head -= 1
                            ids.append(token_id)
                            offsets.append(len(shown) + start + len(word_bytes[:head].decode("utf-8")))
                            at += size
                shown += piece
        return ids, offsets, shown

    def count_tokens(self, text: str) -> int:
        """How many tokens `text` takes before truncation, bos and eos included (compare to `model_max_length`)."""
        return len(self._tokenize(text)[0]) + 2

    def encode(self, texts: list[str]) -> Encoding:
        """Tokenize a batch: [bos] + the first `model_max_length - 2` tokens + [eos], right-padded with the pad
        id to `model_max_length`; the attention mask is 1 on real tokens and 0 on padding."""
        input_ids: list[list[int]] = []
        attention_mask: list[list[int]] = []
        overflow: list[str] = []
        keep = self.model_max_length - 2
        for text in texts:
            ids, offsets, shown = self._tokenize(text)
            overflow.append(shown[offsets[keep] :].strip() if len(ids) > keep else "")
            row = [self.bos_id, *ids[:keep], self.eos_id]
            padding = self.model_max_length - len(row)
            input_ids.append(row + [self.pad_id] * padding)
            attention_mask.append([1] * len(row) + [0] * padding)
        return Encoding(input_ids, attention_mask, overflow)
