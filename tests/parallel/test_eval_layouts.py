"""`r1-megatron eval` of the same MoE model (DeepSeek-V3 architecture: MLA, shared + routed experts) at TP1, TP2,
EP2 and PP2 under torchrun (gloo) gives the same samples and the same numbers: a question's k samples are one request
seeded by (seed, benchmark, question), whatever rank generates it."""
import sys

import pytest

from tests.evaluation.eval_fixtures import eval_args, results_of, samples_of, write_benchmark
from tests.models import hf_fixtures
from tests.parallel.launch import run_to_end

LAYOUTS = {"tp1": (1, []), "tp2": (2, ["parallel.tp=2"]), "ep2": (2, ["parallel.ep=2"]), "pp2": (2, ["parallel.pp=2"])}


@pytest.fixture(scope="module")
def evaluations(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_layouts")
    model = root / "dsv3"
    hf_fixtures.deepseek_v3(vocab_size=hf_fixtures.CHAT_VOCAB, max_position_embeddings=512,
                            num_hidden_layers=4).save_pretrained(model)  # 4 layers: 2 per pipeline stage
    hf_fixtures.chat_tokenizer().save_pretrained(model)
    bench = write_benchmark(root / "bench", questions=5)  # 5 questions: uneven shares over 2 data-parallel ranks
    outs = {}
    for name, (nproc, overrides) in LAYOUTS.items():
        outs[name] = root / name
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m"] \
            if nproc > 1 else [sys.executable, "-m"]
        run_to_end([*launcher, "r1_megatron", *eval_args(model, bench, outs[name], *overrides)], timeout=300)
    return outs


def test_tp2_ep2_and_pp2_evaluate_what_one_process_evaluates(evaluations):
    want_samples, want_results = samples_of(evaluations["tp1"]), results_of(evaluations["tp1"])
    assert len(want_samples) == 5 * 4 and len({tuple(s["token_ids"]) for s in want_samples}) > 1
    for name in ("tp2", "ep2", "pp2"):
        got = samples_of(evaluations[name])
        assert [s["token_ids"] for s in got] == [s["token_ids"] for s in want_samples], name
        assert got == want_samples, name
        assert results_of(evaluations[name]) == want_results, name
