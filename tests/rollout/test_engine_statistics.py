"""Through the whole engine (prefill shared by n completions, split over slot-sized parts): the first tokens of n
seeded completions follow the exact truncated distribution of the model's next-token logits (chi-square)."""
import pytest
import torch

from r1_megatron.models import logits
from r1_megatron.rollout import Engine, SamplingParams

from .engine_fixtures import load_pair
from .sampling_reference import reference_distribution
from .test_sampler_statistics import chi2_sf

N = 3000
PROMPT = [1, 2, 3]
P_REJECT = 1e-3


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_pair("deepseek_v3", tmp_path_factory.mktemp("hf"), vocab_size=16)[1]


def first_tokens(model, **params) -> torch.Tensor:
    engine = Engine(model, max_batch_size=1000, max_seq_len=8)  # n = 3000 > 1000 slots: three prefills
    out = engine.generate([PROMPT], SamplingParams(n=N, max_new_tokens=1, seed=2024, **params))
    return torch.bincount(torch.tensor([c.token_ids[0] for c in out]), minlength=16).double()


def p_value(counts, probs) -> float:
    """Pearson's chi-square; cells expecting < 5 draws are pooled into one (or dropped when the pool is tiny)."""
    expected = N * probs
    small = (expected < 5) & (probs > 0)
    exp_cells = [*expected[~small & (probs > 0)].tolist()]
    obs_cells = [*counts[~small & (probs > 0)].tolist()]
    if expected[small].sum() >= 5:
        exp_cells.append(expected[small].sum().item())
        obs_cells.append(counts[small].sum().item())
    e, o = torch.tensor(exp_cells), torch.tensor(obs_cells)
    return chi2_sf(((o - e) ** 2 / e).sum().item(), len(exp_cells) - 1)


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 4, 1.0), (1.3, 0, 0.8), (0.6, 0, 0.95)])
def test_first_token_frequencies(model, temperature, top_k, top_p):
    logits_V = logits(model, torch.tensor([PROMPT]))[0, -1]
    probs = reference_distribution(logits_V, temperature, top_k, top_p)
    assert 2 < int((probs > 0).sum())  # a real distribution, not a near-greedy one
    counts = first_tokens(model, temperature=temperature, top_k=top_k, top_p=top_p)
    assert counts[probs == 0].sum() == 0  # nothing outside the truncated support
    assert p_value(counts, probs) > P_REJECT


def test_the_test_rejects_the_untruncated_distribution(model):
    logits_V = logits(model, torch.tensor([PROMPT]))[0, -1]
    counts = first_tokens(model, temperature=1.3, top_p=0.8)
    assert p_value(counts, reference_distribution(logits_V, 1.3, 0, 1.0)) < 1e-6


def test_greedy_is_the_argmax(model):
    logits_V = logits(model, torch.tensor([PROMPT]))[0, -1]
    counts = first_tokens(model, temperature=0)
    assert counts[int(logits_V.argmax())] == N
