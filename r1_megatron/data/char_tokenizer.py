"""Character-level tokenizers for the built-in synthetic tasks (the arithmetic demo, the synthetic chats, the toy
pipeline): one token per character (a BPE model without merges), written as `tokenizer.json` +
`tokenizer_config.json`, loadable by r1_megatron.tokenizer.load_tokenizer and transformers'
PreTrainedTokenizerFast."""
from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

from r1_megatron.atomic_file import write_text_atomically


def write_char_tokenizer(directory: str | os.PathLike, vocab: Sequence[str], *, specials: Sequence[str],
                         config: Mapping[str, Any], text_tokens: Sequence[str] = ()) -> str:
    """Write the tokenizer whose ids are `vocab`'s order (it must hold "<unk>") to `directory`; returns it.
    `specials`: tokens matched in text and marked special (skipped by decode(skip_special_tokens=True));
    `text_tokens`: multi-character tokens matched in text that decode as text (e.g. `<think>`); `config`: the
    tokenizer_config.json fields. Deterministic: the same arguments write the same bytes."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    tokenizer = Tokenizer(models.BPE(vocab={tok: i for i, tok in enumerate(vocab)}, merges=[], unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    tokenizer.add_special_tokens([AddedToken(t, special=True) for t in specials])
    if text_tokens:
        tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in text_tokens])
    # every rank of a run builds these files at once: no rank may read a file another has just truncated
    write_text_atomically(os.path.join(directory, "tokenizer.json"), tokenizer.to_str(pretty=True))
    write_text_atomically(os.path.join(directory, "tokenizer_config.json"), json.dumps(dict(config), indent=2))
    return directory
