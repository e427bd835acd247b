"""IncrementalDetokenizer against whole-sequence decoding by r1_megatron.tokenizer and by transformers (independent
references): byte-level BPE with characters split across tokens, SentencePiece's leading "▁", special tokens."""
import json
import random

import pytest
import sentencepiece
from tokenizers import AddedToken
from tokenizers import Tokenizer as Backend
from tokenizers import decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, BertGenerationTokenizer

from r1_megatron.serving.detokenizer import IncrementalDetokenizer
from r1_megatron.tokenizer import load_tokenizer

CORPUS = ["The quick brown fox jumps over the lazy dog.", "What is 12 + 30? The sum is 42.",
          "naïve café, 数学 and 数字", "Hello world 👋 again"]
# Unseen CJK and emoji fall back to single-byte tokens: one character spread over 3 or 4 tokens.
TEXTS = ["The sum is 42 数学", "你好，世界! 🤖🎉 done", "<think>\nlet me think 思考</think>\n\nThe answer is 👍",
         "  spaces\tand\nnewlines ", "é" * 5 + "𝔘𝔫𝔦𝔠𝔬𝔡𝔢"]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
    """Qwen2's kind of tokenizer: byte-level BPE, special chat markers, <think>/</think> added but not special."""
    directory = tmp_path_factory.mktemp("bpe")
    backend = Backend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=330, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(CORPUS * 5, trainer)
    backend.add_tokens([AddedToken("<think>", special=False, normalized=False),
                        AddedToken("</think>", special=False, normalized=False)])
    backend.save(str(directory / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
              "clean_up_tokenization_spaces": False}
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return directory


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
    directory = tmp_path_factory.mktemp("spm")
    (directory / "corpus.txt").write_text("\n".join(CORPUS * 20))
    sentencepiece.SentencePieceTrainer.train(
        input=str(directory / "corpus.txt"), model_prefix=str(directory / "tokenizer"), vocab_size=80,
        model_type="bpe", character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=3, minloglevel=2)
    return directory / "tokenizer.model"


def stream(tokenizer, ids, chunks, prompt_ids=None, skip_special_tokens=True):
    """The deltas of `ids` fed in pieces of the given sizes (cycled), then the flush."""
    detok = IncrementalDetokenizer(tokenizer, prompt_ids=prompt_ids, skip_special_tokens=skip_special_tokens)
    deltas, start, k = [], 0, 0
    while start < len(ids):
        size = chunks[k % len(chunks)]
        deltas.append(detok.add(ids[start:start + size]))
        start, k = start + size, k + 1
    return deltas, detok.flush()


def streamed_text(tokenizer, ids, chunks, **kwargs):
    deltas, tail = stream(tokenizer, ids, chunks, **kwargs)
    return "".join(deltas) + tail


def test_byte_level_bpe_token_by_token(bpe_dir):
    ours, ref = load_tokenizer(bpe_dir), AutoTokenizer.from_pretrained(str(bpe_dir))
    end, pad = ours.token_to_id("<|im_end|>"), ours.token_to_id("<|endoftext|>")
    held = 0
    for text in TEXTS:
        ids = ours.encode(text)
        assert ref.decode(ids) == text
        with_specials = [pad] + ids[:3] + [end] + ids[3:] + [end]
        for skip in (True, False):
            expected = ours.decode(with_specials, skip_special_tokens=skip)
            assert expected == ref.decode(with_specials, skip_special_tokens=skip)
            for tokenizer in (ours, ref):  # the detokenizer takes either
                deltas, tail = stream(tokenizer, with_specials, [1], skip_special_tokens=skip)
                assert "".join(deltas) + tail == expected
                assert tail == "" and not any("\ufffd" in d for d in deltas)  # never half a character
                held += deltas.count("")
        assert "".join(stream(ours, with_specials, [1])[0]) == text  # specials skipped, <think> kept
    assert held > 0  # the texts do split characters over tokens


def test_byte_level_bpe_random_ids_and_chunks(bpe_dir):
    """Any ids (invalid UTF-8 included), after any prompt, fed in any chunk sizes: the deltas add up to the whole
    decode."""
    ours, ref = load_tokenizer(bpe_dir), AutoTokenizer.from_pretrained(str(bpe_dir))
    rng = random.Random(0)
    for _ in range(150):
        ids = [rng.randrange(ours.vocab_size) for _ in range(rng.randrange(1, 25))]
        prompt = ours.encode(rng.choice(TEXTS))[:rng.randrange(0, 8)]
        prompt = [] if "\ufffd" in ours.decode(prompt) else prompt  # a prompt is text: whole characters
        chunks = [rng.randrange(1, 4) for _ in range(3)]
        skip = rng.random() < 0.5
        whole = ours.decode(ids, skip_special_tokens=skip)
        assert whole == ref.decode(ids, skip_special_tokens=skip)
        deltas, tail = stream(ours, ids, chunks, prompt_ids=prompt, skip_special_tokens=skip)
        assert "".join(deltas) + tail == whole
        assert not any(d.endswith("\ufffd") for d in deltas)


def test_sentencepiece_leading_space(spm_model):
    ours = load_tokenizer(spm_model)
    ref = BertGenerationTokenizer(vocab_file=str(spm_model), bos_token="<s>", eos_token="</s>",
                                  pad_token="<pad>", unk_token="<unk>")
    prompt = [1] + ours.encode("What is")
    ids = ours.encode(" the sum of 数学 fox") + [2]
    assert ours.decode(ids, skip_special_tokens=True) == ref.decode(ids, skip_special_tokens=True)
    # Without the prompt a completion's first "▁" is not a space, as decode(ids) has it; after one it is.
    assert streamed_text(ours, ids, [1]) == ours.decode(ids, skip_special_tokens=True) == "the sum of 数学 fox"
    assert streamed_text(ours, ids, [1], prompt_ids=prompt) == " the sum of 数学 fox"
    whole = ref.decode(prompt + ids, skip_special_tokens=True)
    assert whole == ours.decode(prompt + ids, skip_special_tokens=True) == "What is the sum of 数学 fox"


def test_sentencepiece_random_ids_with_prompt(spm_model):
    """The deltas are the text the completion adds to its prompt's: decode(prompt + ids) less decode(prompt)."""
    ours = load_tokenizer(spm_model)
    ref = BertGenerationTokenizer(vocab_file=str(spm_model), bos_token="<s>", eos_token="</s>",
                                  pad_token="<pad>", unk_token="<unk>")
    rng = random.Random(1)

    def draw():  # specials (0..3) rarely, so that words sit both between them and at the start
        return rng.randrange(4) if rng.random() < 0.1 else rng.randrange(4, ours.vocab_size)

    for _ in range(150):
        prompt = [draw() for _ in range(rng.randrange(0, 6))]
        ids = [draw() for _ in range(rng.randrange(1, 20))]
        skip = rng.random() < 0.5
        before, whole = (ours.decode(x, skip_special_tokens=skip) for x in (prompt, prompt + ids))
        # transformers drops the space of a lone "▁" piece at the very end, which a streamed text has already sent
        ends_in_space = ours.decode(ids[-1:]) == "" and ids[-1] >= 4
        assert whole == ref.decode(prompt + ids, skip_special_tokens=skip) or ends_in_space
        assert whole.startswith(before)
        deltas, tail = stream(ours, ids, [rng.randrange(1, 4)], prompt_ids=prompt, skip_special_tokens=skip)
        assert "".join(deltas) + tail == whole[len(before):]
