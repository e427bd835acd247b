"""SamplingParams: defaults, validation errors naming the field and value, the R1 presets."""
import dataclasses

import numpy as np
import pytest

from r1_megatron.rollout import SamplingParams


def test_defaults_match_the_issue_signature():
    p = SamplingParams()
    assert (p.n, p.temperature, p.top_p, p.top_k, p.max_new_tokens, p.stop_token_ids, p.seed) == \
        (1, 1.0, 1.0, 0, 256, (), None)
    assert not p.greedy and SamplingParams(temperature=0).greedy


def test_valid_edges_are_accepted_and_stop_ids_become_a_tuple():
    p = SamplingParams(n=3, temperature=0, top_p=1e-9, top_k=1, max_new_tokens=1, stop_token_ids=[0, 7],
                       seed=-2**63)
    assert p.stop_token_ids == (0, 7)
    assert SamplingParams(seed=2**63 - 1, stop_token_ids=np.array([5, 6])).stop_token_ids == (5, 6)
    assert SamplingParams(top_k=np.int64(4), n=np.int32(2)).top_k == 4
    hash(p)  # frozen and hashable, so it can key per-request state


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        SamplingParams().temperature = 0.5


@pytest.mark.parametrize("kwargs,match", [
    (dict(n=0), r"n must be an int >= 1, got 0"),
    (dict(n=2.0), r"n must be an int >= 1, got 2.0"),
    (dict(n=True), r"n must be an int >= 1, got True"),
    (dict(temperature=-0.1), r"temperature must be a finite number >= 0 .*got -0.1"),
    (dict(temperature=float("nan")), r"temperature .*got nan"),
    (dict(temperature=float("inf")), r"temperature .*got inf"),
    (dict(temperature="1.0"), r"temperature .*got '1.0'"),
    (dict(top_p=0.0), r"top_p must be in \(0, 1\], got 0.0"),
    (dict(top_p=1.5), r"top_p must be in \(0, 1\], got 1.5"),
    (dict(top_p=float("nan")), r"top_p .*got nan"),
    (dict(top_k=-1), r"top_k must be an int >= 0 .*got -1"),
    (dict(top_k=2.5), r"top_k .*got 2.5"),
    (dict(max_new_tokens=0), r"max_new_tokens must be an int >= 1, got 0"),
    (dict(stop_token_ids=[1, -2]), r"stop_token_ids must be non-negative ints, got \[-2\]"),
    (dict(stop_token_ids=[1, 2.0]), r"stop_token_ids must be non-negative ints, got \[2.0\]"),
    (dict(stop_token_ids="12"), r"stop_token_ids must be a sequence of token ids, got '12'"),
    (dict(stop_token_ids=5), r"stop_token_ids must be a sequence of token ids, got 5"),
    (dict(seed=2**63), r"seed must be None or an int64, got 9223372036854775808"),
    (dict(seed=1.5), r"seed must be None or an int64, got 1.5"),
])
def test_invalid_values_raise_naming_field_and_value(kwargs, match):
    with pytest.raises(ValueError, match=r"SamplingParams\." + match):
        SamplingParams(**kwargs)


def test_r1_presets_follow_the_reference():
    rollout = SamplingParams.r1_rollout()
    assert (rollout.n, rollout.temperature, rollout.top_p, rollout.top_k, rollout.max_new_tokens) == \
        (16, 1.0, 1.0, 0, 32768)
    assert SamplingParams.r1_rollout(temperature=0.7).temperature == 0.7  # stage-2 RL
    ev = SamplingParams.r1_evaluation(n=64, seed=3)
    assert (ev.n, ev.temperature, ev.top_p, ev.top_k, ev.max_new_tokens, ev.seed) == (64, 0.6, 0.95, 0, 32768, 3)
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams.r1_evaluation(top_p=2.0)  # overrides are validated too
