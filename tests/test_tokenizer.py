"""r1_megatron.tokenizer against transformers loading the same files (an independent implementation)."""
import json

import pytest
import sentencepiece
from tokenizers import Tokenizer as Backend
from tokenizers import decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, BertGenerationTokenizer

from r1_megatron.data import build_arithmetic_tokenizer
from r1_megatron.tokenizer import load_tokenizer

CORPUS = ["The quick brown fox jumps over the lazy dog.", "Hello world, hello tokenizer!",
          "1 + 2 = 3 and 12 * 4 = 48", "naïve café résumé, 数学 and ümlauts",
          "<think> reason </think> <answer> 4"]
TEXTS = ["Hello the lazy fox 12 café", "", "  spaces   and\nnewlines\t", "数学 unseen Zebra!", "a<s>b</s>c"]

# Written for this test: whitespace control, loops, conditionals, bos/eos variables, raise_exception.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- for message in messages %}\n"
    "  {%- if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' + message['role']) }}{% endif %}\n"
    "  {%- if message['role'] == 'system' %}[SYS] {{ message['content'] | trim }}\n"
    "  {%- elif message['role'] == 'user' %}\n"
    "User: {{ message['content'] }}\n"
    "  {%- else %}\n"
    "Assistant: {{ message['content'] }}{{ eos_token }}\n"
    "  {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\nAssistant: <think>\n{% endif %}"
)
CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+2?"}],
    [{"role": "system", "content": "  Be brief. "}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "数学?"}],
]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("hf_tok")
    backend = Backend(models.BPE(unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(CORPUS * 5, trainer)
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    backend.save(str(directory / "tokenizer.json"))
    bos = {"__type": "AddedToken", "content": "<s>", "special": True}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": bos,
              "eos_token": "</s>", "pad_token": "<pad>", "chat_template": CHAT_TEMPLATE,
              "clean_up_tokenization_spaces": False}
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return directory


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
    directory = tmp_path_factory.mktemp("spm_tok")
    (directory / "corpus.txt").write_text("\n".join(CORPUS * 20))
    sentencepiece.SentencePieceTrainer.train(
        input=str(directory / "corpus.txt"), model_prefix=str(directory / "tokenizer"), vocab_size=70,
        model_type="bpe", character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=3, minloglevel=2)
    return directory / "tokenizer.model"


def test_hf_tokenizer_matches_transformers(hf_dir):
    ours, ref = load_tokenizer(hf_dir), AutoTokenizer.from_pretrained(str(hf_dir))
    for text in TEXTS:
        ids = ours.encode(text)
        assert ids == ref.encode(text, add_special_tokens=False)
        assert ours.encode(text, add_special_tokens=True) == ref.encode(text) == [1] + ids
        assert ours.decode(ids) == ref.decode(ids) == text
        with_specials = [1] + ids + [2, 0]
        assert ours.decode(with_specials) == ref.decode(with_specials)
        assert ours.decode(with_specials, skip_special_tokens=True) == ref.decode(with_specials,
                                                                               skip_special_tokens=True)
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id) == (ref.bos_token_id, ref.eos_token_id,
                                                                         ref.pad_token_id) == (1, 2, 0)
    assert ours.vocab_size == len(ref)


def test_chat_template_matches_transformers(hf_dir):
    ours, ref = load_tokenizer(hf_dir), AutoTokenizer.from_pretrained(str(hf_dir))
    for messages in CONVERSATIONS:
        for gen in (True, False):
            expected = ref.apply_chat_template(messages, add_generation_prompt=gen, tokenize=False)
            assert ours.apply_chat_template(messages, add_generation_prompt=gen) == expected
    assert ours.apply_chat_template(CONVERSATIONS[0]) == "<s>User: What is 2+2?Assistant: <think>\n"
    with pytest.raises(Exception, match="unknown role tool"):
        ours.apply_chat_template([{"role": "tool", "content": "x"}])


def test_sentencepiece_matches_transformers(spm_model, tmp_path):
    ours = load_tokenizer(spm_model)
    ref = BertGenerationTokenizer(vocab_file=str(spm_model), bos_token="<s>", eos_token="</s>",
                                  pad_token="<pad>", unk_token="<unk>")
    for text in TEXTS[:4]:
        ids = ours.encode(text)
        assert ids == ref.encode(text, add_special_tokens=False)
        assert ours.decode(ids) == ref.decode(ids)
        assert ours.encode(text, add_special_tokens=True) == [1] + ids
    mixed = [1] + ours.encode("fox jumps") + [2, 0] + ours.encode("café") + [3]
    assert ours.decode(mixed) == ref.decode(mixed)
    assert ours.decode(mixed, skip_special_tokens=True) == ref.decode(mixed, skip_special_tokens=True)
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id, ours.vocab_size) == (
        ref.bos_token_id, ref.eos_token_id, ref.pad_token_id, ref.vocab_size)
    # a directory with tokenizer.model + tokenizer_config.json gets the chat template
    (tmp_path / "tokenizer.model").write_bytes(spm_model.read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}))
    rendered = load_tokenizer(tmp_path).apply_chat_template(CONVERSATIONS[0])
    assert rendered == "<s>User: What is 2+2?Assistant: <think>\n"


def test_arithmetic_tokenizer_matches_transformers(tmp_path):
    directory = build_arithmetic_tokenizer(tmp_path)
    ours, ref = load_tokenizer(directory), AutoTokenizer.from_pretrained(directory)
    text = "07+35=42<eos><pad>"
    assert ours.encode(text) == ref.encode(text, add_special_tokens=False) == [4, 11, 14, 7, 9, 15, 8, 6, 2, 0]
    assert ours.decode(ours.encode(text)) == ref.decode(ref.encode(text, add_special_tokens=False)) == text
    assert ours.vocab_size == len(ref) == 20
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id) == (1, 2, 0)
    again = build_arithmetic_tokenizer(tmp_path / "again")
    assert open(f"{again}/tokenizer.json").read() == open(f"{directory}/tokenizer.json").read()


def test_errors_name_the_file(tmp_path, hf_dir):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no tokenizer.json or tokenizer.model"):
        load_tokenizer(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "tokenizer.json").write_text((hf_dir / "tokenizer.json").read_text())
    (bad / "tokenizer_config.json").write_text('{"eos_token": "</s>",\n "pad_token": }')
    with pytest.raises(ValueError, match=r"tokenizer_config.json: malformed JSON at line 2"):
        load_tokenizer(bad)
    (bad / "tokenizer.json").write_text('{"model": {"type": "nonsense"}}')
    with pytest.raises(ValueError, match=r"bad/tokenizer.json: not a valid tokenizers file"):
        load_tokenizer(bad)
    (tmp_path / "junk.model").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="junk.model: not a valid SentencePiece model"):
        load_tokenizer(tmp_path / "junk.model")
    (bad / "tokenizer.json").write_text((hf_dir / "tokenizer.json").read_text())
    (bad / "tokenizer_config.json").write_text("{}")
    with pytest.raises(ValueError, match="no chat_template"):
        load_tokenizer(bad).apply_chat_template(CONVERSATIONS[0])
