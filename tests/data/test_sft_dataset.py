"""SFT data: hand-worked tokens and loss masks on the tiny ChatML tokenizer, each template's exact text, record
formats, over-long handling, errors naming file:line:field, skips, Parquet, validation splits, exact resumption."""
import copy
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from r1_megatron.data.records import DataError
from r1_megatron.data.sft_dataset import SFTDataConfig, SFTDataset, SFTExample, load_sft_datasets
from r1_megatron.tokenizer import load_tokenizer
from r1_megatron.training.packing import TrainSequence, pack_batches, packing_stats
from tests.doc_examples import ROOT, doc_examples
from tests.models.hf_fixtures import chat_tokenizer

Q, A = "What is 1 + 2?", "The sum is 3."
PROMPT_TEXT = f"<|im_start|>user\n{Q}<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    path = tmp_path_factory.mktemp("chat_tok")
    chat_tokenizer().save_pretrained(path)
    return load_tokenizer(path)


def write_jsonl(path, lines):
    path.write_text("".join((json.dumps(x) if not isinstance(x, str) else x) + "\n" for x in lines))
    return str(path)


def load(tmp_path, tok, lines, **kw):
    kw.setdefault("shuffle", False)
    return load_sft_datasets(SFTDataConfig(paths=(write_jsonl(tmp_path / "train.jsonl", lines),), **kw), tok)


def trained_text(tok, example: SFTExample) -> str:
    return "".join(tok.decode([example.tokens[t + 1]]) for t, m in enumerate(example.loss_mask) if m)


def expected(tok, segments):
    """(tokens, loss_mask) of text segments encoded one by one, each (text, trained)."""
    tokens, trained = [], []
    for text, on in segments:
        ids = tok.encode(text) if isinstance(text, str) else text
        tokens += ids
        trained += [on] * len(ids)
    return tokens, [1.0 if on else 0.0 for on in trained[1:]]


def user_assistant(q=Q, a=A, **assistant):
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a, **assistant}]}


# ---- the chat template: hand-worked masks --------------------------------------------------------------------

def test_single_turn_tokens_and_mask_by_hand(tmp_path, tok):
    ex = load(tmp_path, tok, [user_assistant()]).train[0]
    pieces = [tok.decode([i]) for i in ex.tokens]
    assert pieces == ["<|im_start|>", "u", "s", "e", "r", "\n", "What", " is", " 1", " +", " 2", "?", "<|im_end|>",
                      "\n", "<|im_start|>", "a", "s", "s", "is", "t", "a", "n", "t", "\n",
                      "Th", "e", " sum", " is", " 3", ".", "<|im_end|>", "\n"]
    # labels are tokens 1..31: tokens 24-30 (the answer and its <|im_end|>) are trained, not the final "\n"
    assert ex.loss_mask == [0.0] * 23 + [1.0] * 7 + [0.0]
    assert len(ex.loss_mask) == len(ex.tokens) - 1 and ex.source.endswith("train.jsonl:1")


def test_multi_turn_every_assistant_turn_trained(tmp_path, tok):
    record = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": Q},
                           {"role": "assistant", "content": A}, {"role": "user", "content": "And 2 + 2?"},
                           {"role": "assistant", "content": "The sum is 4."}]}
    ex = load(tmp_path, tok, [record]).train[0]
    assert (ex.tokens, ex.loss_mask) == expected(tok, [
        ("<|im_start|>system\nBe brief.<|im_end|>\n" + PROMPT_TEXT, False), (A + "<|im_end|>", True),
        ("\n<|im_start|>user\nAnd 2 + 2?<|im_end|>\n<|im_start|>assistant\n", False),
        ("The sum is 4.<|im_end|>", True), ("\n", False)])
    assert trained_text(tok, ex) == "The sum is 3.<|im_end|>The sum is 4.<|im_end|>"
    im_end = tok.token_to_id("<|im_end|>")
    labels = ex.tokens[1:]
    assert sum(1 for t in labels if t == im_end) == 5  # system, user, assistant, user, assistant turns
    assert sum(1 for t, m in zip(labels, ex.loss_mask) if t == im_end and m) == 2  # only the assistants'


def test_chat_reasoning_content_goes_in_as_think_block(tmp_path, tok):
    ex = load(tmp_path, tok, [user_assistant(a="3", reasoning_content="1 + 2 = 3")]).train[0]
    assert tok.decode(ex.tokens) == PROMPT_TEXT + "<think>\n1 + 2 = 3\n</think>\n\n3<|im_end|>\n"
    assert trained_text(tok, ex) == "<think>\n1 + 2 = 3\n</think>\n\n3<|im_end|>"


def test_template_that_drops_earlier_reasoning_is_an_error(tmp_path, tok):
    # like Qwen3's / R1's own templates: earlier assistant turns lose their think block
    dropping = copy.copy(tok)
    dropping.chat_template = (
        "{%- for m in messages %}{{- '<|im_start|>' + m['role'] + '\\n' }}{%- if m['role'] == 'assistant' and not "
        "loop.last %}{{- m['content'].split('</think>')[-1].lstrip() }}{%- else %}{{- m['content'] }}{%- endif %}"
        "{{- '<|im_end|>\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
        "{%- endif %}")
    record = {"messages": [{"role": "user", "content": Q}, {"role": "assistant", "content": "3",
                                                              "reasoning_content": "1 + 2 = 3"},
                           {"role": "user", "content": "And 2 + 2?"}, {"role": "assistant", "content": "4"}]}
    path = write_jsonl(tmp_path / "mt.jsonl", [user_assistant(), record])
    with pytest.raises(DataError) as err:
        load_sft_datasets(SFTDataConfig(paths=(path,)), dropping)
    assert str(err.value).startswith(f"{path}:2: field 'messages': the chat template is not prefix-consistent: the "
                                     f"tokens of messages 1-2 are not a prefix of those of all 4 messages")
    # r1_distill trains only the last turn, so the same data works with it
    splits = load_sft_datasets(SFTDataConfig(paths=(path,), template="r1_distill", shuffle=False), dropping)
    assert trained_text(tok, splits.train[1]) == "<think>\n\n</think>\n\n4<|im_end|>"


def test_end_of_turn_token(tmp_path, tok):
    other = copy.copy(tok)  # a template closing turns with <|endoftext|>, not the EOS <|im_end|>
    other.chat_template = ("{%- for m in messages %}{{- m['role'] + ':\\n' + m['content'] + '<|endoftext|>' }}"
                           "{%- endfor %}{%- if add_generation_prompt %}{{- 'assistant:\\n' }}{%- endif %}")
    path = write_jsonl(tmp_path / "t.jsonl", [user_assistant()])
    with pytest.raises(DataError, match=r"t.jsonl:1: field 'messages': the chat template does not close assistant "
                                        r"message 2 with the end-of-turn token '<\|im_end\|>'; set end_of_turn_token"):
        load_sft_datasets(SFTDataConfig(paths=(path,)), other)
    ex = load_sft_datasets(SFTDataConfig(paths=(path,), end_of_turn_token="<|endoftext|>"), other).train[0]
    assert trained_text(tok, ex) == "The sum is 3.<|endoftext|>"
    with pytest.raises(ValueError, match="end_of_turn_token '<nope>' is not a token"):
        load_sft_datasets(SFTDataConfig(paths=(path,), end_of_turn_token="<nope>"), other)


# ---- r1 templates: exact text -------------------------------------------------------------------------------

def test_r1_distill_text(tmp_path, tok):
    lines = [{"prompt": Q, "response": A, "reasoning": "Add them."},
             {"prompt": Q, "response": "<think>\nx\n</think>\n\n3"}, {"prompt": Q, "response": A}]
    ds = load(tmp_path, tok, lines, template="r1_distill").train
    assert tok.decode(ds[0].tokens) == PROMPT_TEXT + "<think>\nAdd them.\n</think>\n\nThe sum is 3.<|im_end|>"
    assert trained_text(tok, ds[0]) == "<think>\nAdd them.\n</think>\n\nThe sum is 3.<|im_end|>"
    assert (ds[0].tokens, ds[0].loss_mask) == expected(tok, [
        (PROMPT_TEXT, False), ("<think>\nAdd them.\n</think>\n\nThe sum is 3.", True), ([tok.eos_token_id], True)])
    assert trained_text(tok, ds[1]) == "<think>\nx\n</think>\n\n3<|im_end|>"  # already has its think block
    assert trained_text(tok, ds[2]) == "<think>\n\n</think>\n\nThe sum is 3.<|im_end|>"  # no reasoning: empty block


def test_r1_distill_generation_prompt_that_opens_think(tmp_path, tok):
    opening = copy.copy(tok)
    opening.chat_template = tok.chat_template.replace("'<|im_start|>assistant\\n'",
                                                      "'<|im_start|>assistant\\n<think>\\n'")
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": Q, "response": A, "reasoning": "Add."}])
    ex = load_sft_datasets(SFTDataConfig(paths=(path,), template="r1_distill"), opening).train[0]
    assert tok.decode(ex.tokens) == PROMPT_TEXT + "<think>\nAdd.\n</think>\n\nThe sum is 3.<|im_end|>"
    assert trained_text(tok, ex) == "Add.\n</think>\n\nThe sum is 3.<|im_end|>"


def test_r1_cold_start_text(tmp_path, tok):
    lines = [{"prompt": Q, "response": A, "reasoning": "Add them."},
             {"prompt": Q, "response": "<think>\nAdd them.\n</think>\n\nThe sum is 3."}]
    ds = load(tmp_path, tok, lines, template="r1_cold_start").train
    for ex in ds.examples:  # separate reasoning, or a think block: the same cold-start text
        assert tok.decode(ex.tokens) == PROMPT_TEXT + "|special_token|Add them.|special_token|The sum is 3.<|im_end|>"
        assert trained_text(tok, ex) == "|special_token|Add them.|special_token|The sum is 3.<|im_end|>"
    custom = load(tmp_path, tok, lines[:1], template="r1_cold_start", cold_start_separator="<|endoftext|>").train[0]
    sep = tok.token_to_id("<|endoftext|>")
    assert [i for i, t in enumerate(custom.tokens) if t == sep] == [24, 24 + 1 + len(tok.encode("Add them."))]
    with pytest.raises(DataError, match=r"train.jsonl:1: field 'response': r1_cold_start needs the reasoning"):
        load(tmp_path, tok, [{"prompt": Q, "response": A}], template="r1_cold_start")


def test_r1_templates_train_the_last_message_only(tmp_path, tok):
    record = {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "1"},
                           {"role": "assistant", "content": "2", "reasoning_content": "r"},
                           {"role": "user", "content": "3"}, {"role": "assistant", "content": "4",
                                                               "reasoning_content": "why"}]}
    ex = load(tmp_path, tok, [record], template="r1_distill").train[0]
    assert tok.decode(ex.tokens) == ("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n1<|im_end|>\n<|im_start|>"
                                     "assistant\n2<|im_end|>\n<|im_start|>user\n3<|im_end|>\n<|im_start|>assistant\n"
                                     "<think>\nwhy\n</think>\n\n4<|im_end|>")  # earlier reasoning not in context
    assert trained_text(tok, ex) == "<think>\nwhy\n</think>\n\n4<|im_end|>"
    with pytest.raises(DataError, match=r"message 2 has role 'user', not assistant"):
        load(tmp_path, tok, [{"messages": record["messages"][:2]}], template="r1_distill")


# ---- record formats ---------------------------------------------------------------------------------------------

def test_prompt_response_with_system_and_custom_fields(tmp_path, tok):
    lines = [{"instruction": Q, "output": A, "sys": "Be brief."}, {"instruction": Q, "output": 3, "sys": ""}]
    ds = load(tmp_path, tok, lines, prompt_field="instruction", response_field="output", system_field="sys").train
    assert tok.decode(ds[0].tokens) == "<|im_start|>system\nBe brief.<|im_end|>\n" + PROMPT_TEXT + A + "<|im_end|>\n"
    assert tok.decode(ds[1].tokens) == PROMPT_TEXT + "3<|im_end|>\n"  # empty system: none; a number is its text
    assert trained_text(tok, ds[0]) == A + "<|im_end|>"


def test_auto_format_per_record_and_forced_format(tmp_path, tok):
    lines = [user_assistant(), {"prompt": Q, "response": A}]
    ds = load(tmp_path, tok, lines).train
    assert ds[0].tokens == ds[1].tokens and ds[0].loss_mask == ds[1].loss_mask
    with pytest.raises(DataError, match=r"train.jsonl:2: field 'messages': missing \(or null\)"):
        load(tmp_path, tok, lines, format="messages")


def test_parquet_messages_and_prompt_response(tmp_path, tok):
    messages = pa.table({"messages": [[{"role": "user", "content": Q, "reasoning_content": None},
                                       {"role": "assistant", "content": A, "reasoning_content": "r"}]]})
    pq.write_table(messages, tmp_path / "m.parquet")
    pq.write_table(pa.table({"prompt": [Q, Q], "response": [A, None]}), tmp_path / "p.parquet")
    cfg = SFTDataConfig(paths=(str(tmp_path / "m.parquet"), str(tmp_path / "p.parquet")), on_error="skip",
                        shuffle=False)
    ds = load_sft_datasets(cfg, tok).train
    assert [e.source.rsplit("/", 1)[1] for e in ds.examples] == ["m.parquet:1", "p.parquet:1"]
    assert trained_text(tok, ds[0]) == "<think>\nr\n</think>\n\n" + A + "<|im_end|>"
    assert ds.stats["skipped_missing_field"] == 1
    with pytest.raises(DataError, match=r"p.parquet:2: field 'response': missing \(or null\)"):
        load_sft_datasets(SFTDataConfig(paths=(str(tmp_path / "p.parquet"),)), tok)


# ---- errors and skips ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("line, message", [
    ({"messages": [{"role": "user", "content": Q}, {"role": "assitant", "content": A}]},
     "field 'messages': message 2 has role 'assitant'; expected system, user or assistant"),
    ({"messages": [{"role": "user", "content": Q}, {"role": "assistant", "content": 3}]},
     "field 'messages': message 2 (assistant): content must be a string, got int"),
    ({"messages": [{"role": "user", "content": Q}, {"role": "assistant"}]},
     "field 'messages': message 2 (assistant): content must be a string, got null"),
    ({"messages": [{"role": "user", "content": Q}, "hi"]},
     "field 'messages': message 2 is str, not an object with role and content"),
    ({"messages": []}, "field 'messages': expected a non-empty list of messages, got an empty list"),
    ({"messages": "hi"}, "field 'messages': expected a non-empty list of messages, got str"),
    ({"messages": [{"role": "user", "content": Q}]}, "field 'messages': nothing to train on: no assistant tokens"),
    ({"prompt": Q}, "field 'response': missing (or null)"),
    ({"response": A}, "field 'prompt': missing (or null)"),
    ({"prompt": [Q], "response": A}, "field 'prompt': expected a string, got list"),
    ({"prompt": Q, "response": A, "reasoning": {"x": 1}}, "field 'reasoning': expected a string, got dict"),
    ('{"prompt": "a", "response": ', "malformed JSON at column"),
])
def test_bad_record_names_file_line_and_field(tmp_path, tok, line, message):
    path = write_jsonl(tmp_path / "train.jsonl", [user_assistant(), line])
    with pytest.raises(DataError) as err:
        load_sft_datasets(SFTDataConfig(paths=(path,)), tok)
    assert str(err.value).startswith(f"{path}:2: {message}")
    assert (err.value.path, err.value.line) == (path, 2)


def test_skip_counts_and_notes(tmp_path, tok):
    lines = [user_assistant(), "{oops", {"prompt": Q}, {"messages": [{"role": "bot", "content": "x"}]},
             {"messages": [{"role": "user", "content": Q}]}, {"prompt": Q, "response": A}]
    splits = load(tmp_path, tok, lines, on_error="skip")
    assert len(splits.train) == 2
    stats = splits.train.stats
    assert {k: v for k, v in stats.items() if k.startswith("skipped_")} == {
        "skipped_malformed": 1, "skipped_missing_field": 1, "skipped_bad_message": 1, "skipped_nothing_to_train": 1}
    assert splits.notes() == ["sft data: skipped 4 bad records (data.on_error=skip): 1 bad message, 1 malformed, "
                              "1 missing field, 1 nothing to train"]


def test_empty_dataset_is_a_clear_error(tmp_path, tok):
    with pytest.raises(ValueError, match=r"sft data: no usable training examples in \[.*e.jsonl'\] \(stats: "
                                         r"\{'skipped_missing_field': 1\}\)"):
        load_sft_datasets(SFTDataConfig(paths=(write_jsonl(tmp_path / "e.jsonl", [{"prompt": Q}]),),
                                        on_error="skip"), tok)


def test_config_validation():
    with pytest.raises(ValueError, match=r"^SFTDataConfig.max_seq_len must be >= 2, got 0$"):
        SFTDataConfig(paths=("a.jsonl",), max_seq_len=0)
    with pytest.raises(ValueError, match=r"SFTDataConfig.template must be one of 'chat', 'r1_cold_start', "
                                         r"'r1_distill', got 'r1'"):
        SFTDataConfig(paths=("a.jsonl",), template="r1")
    with pytest.raises(ValueError, match="SFTDataConfig.paths must name at least one file"):
        SFTDataConfig(paths=())
    with pytest.raises(ValueError, match="validation_paths or validation_fraction, not both"):
        SFTDataConfig(paths=("a.jsonl",), validation_paths=("v.jsonl",), validation_fraction=0.1)
    with pytest.raises(ValueError, match=r"validation_fraction must be in \[0, 1\), got 1.0"):
        SFTDataConfig(paths=("a.jsonl",), validation_fraction=1.0)
    assert SFTDataConfig(paths="a.jsonl", overlong="drop").paths == ("a.jsonl",)


# ---- over-long examples ---------------------------------------------------------------------------------------------

OVERLONG = [user_assistant(),  # 32 tokens: cut to 26, two answer tokens still trained
            user_assistant(q=f"{Q} {Q}"),  # a 31-token prompt: nothing trained is left in 26 tokens
            user_assistant(q="1", a="2")]  # 22 tokens: fits


def test_truncate_counts(tmp_path, tok):
    splits = load(tmp_path, tok, OVERLONG, max_seq_len=26)
    ds = splits.train
    assert [len(e.tokens) for e in ds.examples] == [26, 22]
    assert ds[0].tokens == load(tmp_path, tok, OVERLONG[:1]).train[0].tokens[:26]
    assert ds[0].loss_mask == [0.0] * 23 + [1.0] * 2 and trained_text(tok, ds[0]) == "The"
    assert splits.notes() == [
        "sft data: 1 of 3 examples truncated to 26 tokens (data.max_seq_len; data.overlong=truncate)",
        "sft data: dropped 1 of 3 examples whose trained tokens all lie past the first 26 tokens (data.max_seq_len)"]


def test_drop_counts(tmp_path, tok):
    splits = load(tmp_path, tok, OVERLONG, max_seq_len=26, overlong="drop")
    assert [len(e.tokens) for e in splits.train.examples] == [22]
    assert splits.notes() == ["sft data: dropped 2 of 3 examples longer than 26 tokens (data.max_seq_len; "
                              "data.overlong=drop)"]
    assert load(tmp_path, tok, OVERLONG, max_seq_len=32, overlong="drop").notes() == [
        "sft data: dropped 1 of 3 examples longer than 32 tokens (data.max_seq_len; data.overlong=drop)"]


# ---- order, resumption, validation -------------------------------------------------------------------------------

def numbered(n):
    return [user_assistant(q=str(i), a=str(i + 1)) for i in range(n)]


def test_epochs_reshuffle_and_batches_cross_epochs(tmp_path, tok):
    ds = load(tmp_path, tok, numbered(5), shuffle=True, seed=3).train
    first = [ds.next_batch(2) for _ in range(5)]  # 10 examples: exactly two epochs
    lines = [[int(e.source.rsplit(":", 1)[1]) for e in b] for b in first]
    flat = sum(lines, [])
    assert sorted(flat[:5]) == sorted(flat[5:]) == [1, 2, 3, 4, 5]
    assert flat[:5] != flat[5:]  # a new order in epoch 1 (seed 3)
    assert ds.epoch_progress == 2.0 and ds.epoch == 2
    ordered = load(tmp_path, tok, numbered(5)).train
    assert [e.source[-1] for e in ordered.next_batch(7)] == list("1234512")
    assert ordered.epoch == 1 and ordered.epoch_progress == pytest.approx(1.4)


def test_resume_draws_the_same_examples(tmp_path, tok):
    lines = numbered(7)
    a = load(tmp_path, tok, lines, shuffle=True, seed=11).train
    for _ in range(4):
        a.next_batch(3)
    state = json.loads(json.dumps(a.state_dict()))  # as a checkpoint stores it
    b = load(tmp_path, tok, lines, shuffle=True, seed=11).train
    b.load_state_dict(state)
    for _ in range(5):
        assert [e.source for e in a.next_batch(3)] == [e.source for e in b.next_batch(3)]
    other_seed = load(tmp_path, tok, lines, shuffle=True, seed=12).train
    with pytest.raises(ValueError, match="the state is for seed 11"):
        other_seed.load_state_dict(state)
    shorter = load(tmp_path, tok, lines[:6], shuffle=True, seed=11).train
    with pytest.raises(ValueError, match="the state is for num_examples 7, fingerprint '[0-9a-f]+'; this dataset has "
                                         "num_examples 6"):
        shorter.load_state_dict(state)
    retemplated = load(tmp_path, tok, lines, shuffle=True, seed=11, template="r1_distill").train
    with pytest.raises(ValueError, match="the state is for fingerprint"):  # same count, other tokens
        retemplated.load_state_dict(state)


def test_validation_fraction_is_deterministic_and_disjoint(tmp_path, tok):
    splits = load(tmp_path, tok, numbered(10), validation_fraction=0.2, seed=5)
    train, val = splits.train, splits.validation
    sources = lambda ds: [e.source for e in ds.examples]  # noqa: E731
    assert len(val) == 2 and len(train) == 8 and not set(sources(train)) & set(sources(val))
    again = load(tmp_path, tok, numbered(10), validation_fraction=0.2, seed=5, shuffle=True)
    assert sources(again.validation) == sources(val)  # the training order does not move the split
    assert sources(load(tmp_path, tok, numbered(10), validation_fraction=0.2, seed=6).validation) != sources(val)
    assert [len(b) for b in val.iter_batches(3)] == [2]
    assert splits.notes() == ["sft data: held out 2 of 10 examples for validation (data.validation_fraction=0.2, "
                              "seed 5)"]
    assert len(load(tmp_path, tok, numbered(3), validation_fraction=0.01).validation) == 1  # at least one


def test_validation_paths(tmp_path, tok):
    val_path = write_jsonl(tmp_path / "val.jsonl", [user_assistant(), {"prompt": Q}])
    splits = load(tmp_path, tok, numbered(3), validation_paths=(val_path,), on_error="skip")
    assert len(splits.train) == 3 and len(splits.validation) == 1
    assert splits.validation[0].source == f"{val_path}:1"
    assert splits.notes() == ["sft validation data: skipped 1 bad records (data.on_error=skip): 1 missing field"]


def test_in_memory_records_and_direct_dataset(tok):
    cfg = SFTDataConfig(paths=("unused.jsonl",), shuffle=False)
    splits = load_sft_datasets(cfg, tok, records=[user_assistant()], source="<rejection sampling>")
    assert splits.train[0].source == "<rejection sampling>:1"
    ds = SFTDataset(splits.train.examples * 2, cfg)
    assert len(ds) == 2 and ds.notes() == [] and ds.lengths() == [32, 32]
    served = ds.next_batch(1)[0]  # held compactly, served as plain lists
    assert type(served.tokens) is list and type(served.tokens[0]) is int and type(served.loss_mask[0]) is float
    assert served == splits.train[0]
    with pytest.raises(ValueError, match="no train examples"):
        SFTDataset([], cfg)
    with pytest.raises(ValueError, match=r"SFTExample f:1: loss_mask has 2 entries, expected len\(tokens\) - 1 = 1"):
        SFTDataset([SFTExample([1, 2], [1.0, 1.0], "f:1")], cfg)


# ---- docs/sft_data.md's worked example is what the code renders ----------------------------------------------------

def marked(tok, example: SFTExample) -> str:
    """The example's text with each trained run of tokens inside ⟦...⟧ (the docs' notation)."""
    flags = [False] + [m > 0 for m in example.loss_mask]
    runs: list[tuple[bool, list[int]]] = []
    for token, on in zip(example.tokens, flags):
        if not runs or runs[-1][0] != on:
            runs.append((on, []))
        runs[-1][1].append(token)
    return "".join(f"⟦{tok.decode(ids)}⟧" if on else tok.decode(ids) for on, ids in runs)


@pytest.mark.parametrize("template, line", [("chat", 1), ("chat", 2), ("r1_distill", 1), ("r1_cold_start", 2)])
def test_docs_worked_example(tmp_path, tok, template, line):
    docs = doc_examples("sft_data.md")
    path = tmp_path / "sft_train.jsonl"
    path.write_text(docs["sft_train.jsonl"])
    ds = load_sft_datasets(SFTDataConfig(paths=(str(path),), template=template, on_error="skip",
                                         shuffle=False), tok).train
    example = next(e for e in ds.examples if e.source == f"{path}:{line}")
    assert marked(tok, example).rstrip("\n") == docs[f"{template} line {line}"].rstrip("\n")
    if template == "chat" and line == 1:
        assert (len(example.tokens), example.num_trained) == (107, 56)  # the counts the page gives
    if template == "r1_cold_start":  # line 1 has no reasoning in its last answer: the page's error
        with pytest.raises(DataError, match=r"sft_train.jsonl:1: field 'messages': r1_cold_start needs the reasoning"):
            load_sft_datasets(SFTDataConfig(paths=(str(path),), template=template), tok)


def test_docs_packing_table():
    seqs = [TrainSequence(t, [1.0] * (len(t) - 1)) for t in
            ([10, 11, 12, 13], [20, 21, 22], [30, 31, 32, 33, 34, 35], [40, 41])]
    batches = pack_batches(seqs, 6, pad_id=-1)
    table = [[mb.input_ids[0].tolist(), mb.labels[0].tolist(), mb.position_ids[0].tolist(),
              mb.segment_ids[0].tolist()] for mb in batches]
    page = (ROOT / "docs" / "sft_data.md").read_text()
    for row, columns in enumerate(table):
        cells = " | ".join(" ".join("pad" if v == -1 else str(v) for v in col) for col in columns)
        assert f"| {row} | {cells} |" in page
    assert packing_stats(seqs, batches).efficiency == 11 / 12
