"""docs/evaluation.md's worked example is true: its YAML and data load into the documented reference and, with
a ChatML template, the documented prompt byte for byte."""
from r1_megatron.data.synthetic_chat import build_chat_tokenizer
from r1_megatron.evaluation.benchmark_suite import load_benchmarks, load_questions
from r1_megatron.tokenizer import load_tokenizer
from tests.doc_examples import doc_examples

EXAMPLES = doc_examples("evaluation.md")


def test_worked_example(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the Python example names the YAML relative to where it runs
    for name in ("my_benchmarks.yaml", "mini_math.jsonl"):
        (tmp_path / name).write_text(EXAMPLES[name])
    python = EXAMPLES["python"]
    assert 'load_benchmarks("my_benchmarks.yaml", ["mini_math"])' in python
    (spec,) = load_benchmarks("my_benchmarks.yaml", ["mini_math"])
    assert (spec.k, spec.pass_ks, spec.cons_k) == (8, (8,), 8)
    questions = load_questions(spec, load_tokenizer(build_chat_tokenizer(tmp_path / "tok")))
    assert f"print(questions[0].reference)  # {questions[0].reference}" in python
    assert [q.reference["answer"] for q in questions] == ["56", "\\frac{3}{4}"]
    assert questions[0].prompt == EXAMPLES["prompt"]  # the block ends with the prompt's own "<think>\n"
