"""Learning a byte-level BPE vocabulary and writing it as a CLIP tokenizer folder: what the `shapes` recipe's first
stage does. `dalle_cli.tokenizer.Tokenizer` loads the result; nothing at inference time learns or writes tokenizers,
so this lives with the recipe, outside the package.
"""

import heapq
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from dalle_cli.errors import UsageError
from dalle_cli.tokenizer import (BOS_TOKEN, BYTE_TO_UNICODE, END_OF_WORD, EOS_TOKEN, merge_pair, normalize,
                                 pre_tokenize, word_symbols)

MERGES_HEADER = "#version: 0.2"


def learn_bpe(corpus: list[str], vocab_size: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Learn BPE merges on `corpus`, words split as `dalle_cli.tokenizer.Tokenizer` splits them: the most frequent
    adjacent pair is merged first (ties go to the smallest pair in string order), until the vocabulary holds
    `vocab_size` entries or no pair is left. The vocabulary is built as CLIP's: the 256 byte characters, the same
    with "</w>", one entry per new merged symbol, then `<|startoftext|>` and `<|endoftext|>`. A `vocab_size` too
    small for those raises `UsageError`."""
    base = list(BYTE_TO_UNICODE.values())
    if vocab_size < 2 * len(base) + 2:
        raise UsageError(f"vocab_size must be at least {2 * len(base) + 2} (the byte alphabet twice and 2 specials)")
    words = Counter(word for text in corpus for word, _ in pre_tokenize(normalize(text)))
    splits = [word_symbols(word) for word in words]
    counts = list(words.values())
    pairs: Counter[tuple[str, str]] = Counter()
    holders: dict[tuple[str, str], set[int]] = defaultdict(set)  # pair -> indices of the words that hold it
    for i, symbols in enumerate(splits):
        for pair in zip(symbols, symbols[1:]):
            pairs[pair] += counts[i]
            holders[pair].add(i)
    heap = [(-count, pair) for pair, count in pairs.items()]  # most frequent, then smallest pair, on top
    heapq.heapify(heap)
    tokens = base + [c + END_OF_WORD for c in base]
    known = set(tokens)
    merges: list[tuple[str, str]] = []
    while len(tokens) < vocab_size - 2 and heap:
        negative_count, best = heapq.heappop(heap)
        if -negative_count != pairs.get(best):  # an entry left behind by a later count change
            continue
        merges.append(best)
        if best[0] + best[1] not in known:
            known.add(best[0] + best[1])
            tokens.append(best[0] + best[1])
        changed: set[tuple[str, str]] = set()
        for i in holders.pop(best):
            for pair in zip(splits[i], splits[i][1:]):
                pairs[pair] -= counts[i]
                changed.add(pair)
            splits[i] = merge_pair(splits[i], best)
            for pair in zip(splits[i], splits[i][1:]):
                pairs[pair] += counts[i]
                holders[pair].add(i)
                changed.add(pair)
        for pair in changed:
            if pairs[pair] > 0:
                heapq.heappush(heap, (-pairs[pair], pair))
            else:
                del pairs[pair]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    return {token: i for i, token in enumerate(tokens)}, merges


def _added_token(content: str) -> dict[str, Any]:
    return {"content": content, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}


def save_tokenizer_files(
    folder: Path,
    vocab: dict[str, int],
    merges: list[tuple[str, str]],
    pad_token: str = "!",
    model_max_length: int = 77,
) -> None:
    """Write vocab.json, merges.txt (with CLIP's "#version: 0.2" header), tokenizer_config.json and
    special_tokens_map.json in the layout of Karlo's tokenizer folder, loadable by
    `dalle_cli.tokenizer.Tokenizer.from_folder` and by transformers' `CLIPTokenizer.from_pretrained`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("\n".join([MERGES_HEADER, *(f"{a} {b}" for a, b in merges)]) + "\n", "utf-8")
    special_map = {
        "bos_token": _added_token(BOS_TOKEN),
        "eos_token": _added_token(EOS_TOKEN),
        "pad_token": pad_token,
        "unk_token": _added_token(EOS_TOKEN),
    }
    config = {
        "add_prefix_space": False,
        "bos_token": {"__type": "AddedToken", **_added_token(BOS_TOKEN)},
        "do_lower_case": True,
        "eos_token": {"__type": "AddedToken", **_added_token(EOS_TOKEN)},
        "errors": "replace",
        "model_max_length": model_max_length,
        "pad_token": pad_token,
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": {"__type": "AddedToken", **_added_token(EOS_TOKEN)},
    }
    for name, data in (("special_tokens_map.json", special_map), ("tokenizer_config.json", config)):
        (folder / name).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
