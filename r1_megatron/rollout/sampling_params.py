"""Per-request sampling settings, shaped like vLLM's `SamplingParams`, and the DeepSeek-R1 presets.

Presets (docs/r1_reference.md): RL rollouts sample at temperature 1.0 with G = 16 outputs per
question and up to 32,768 tokens ("Hyperparameters": R1-Zero and R1 stage-1 RL; stage-2 RL uses 0.7);
evaluation samples at temperature 0.6, top-p 0.95, k samples per question (4–64), up to 32,768 tokens
("Evaluation protocol").
"""
from __future__ import annotations

import dataclasses
import math
import numbers

INT64_MIN, INT64_MAX = -2**63, 2**63 - 1
R1_MAX_NEW_TOKENS = 32768
R1_GROUP_SIZE = 16
MAX_TOP_LOGPROBS = 20  # OpenAI's limit for top_logprobs


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How to sample one request's completions.

    n: completions per prompt (they share the prompt's prefill).
    temperature: 0 means greedy (argmax); otherwise tokens are drawn from softmax(logits / temperature),
        truncated by top_k then top_p (see sampler.py for the exact rule and the logprobs returned).
    top_p: nucleus mass in (0, 1]; 1 keeps every token.
    top_k: keep the k most likely tokens (ties at the boundary kept); 0 keeps every token.
    max_new_tokens: completion length limit ("length" finish).
    stop_token_ids: tokens that end a completion ("stop" finish; the stop token is included).
    logprobs: how many of the most likely tokens to report, with their logprobs, beside each sampled token
        (0 = none, at most MAX_TOP_LOGPROBS; rollout/top_logprobs.py), as OpenAI's `top_logprobs`.
    seed: an int64 that makes the request's samples reproducible across runs, batch compositions and
        tensor-parallel layouts; None draws one from the engine's generator (sampler.request_seeds).
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 256
    stop_token_ids: tuple[int, ...] = ()
    seed: int | None = None
    logprobs: int = 0

    def __post_init__(self):
        if not _is_int(self.n) or self.n < 1:
            raise ValueError(f"SamplingParams.n must be an int >= 1, got {self.n!r}")
        if not _is_real(self.temperature) or not math.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError(f"SamplingParams.temperature must be a finite number >= 0 (0 = greedy), "
                             f"got {self.temperature!r}")
        if not _is_real(self.top_p) or not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p!r}")
        if not _is_int(self.top_k) or self.top_k < 0:
            raise ValueError(f"SamplingParams.top_k must be an int >= 0 (0 = no top-k), got {self.top_k!r}")
        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            raise ValueError(f"SamplingParams.max_new_tokens must be an int >= 1, got {self.max_new_tokens!r}")
        self._check_stop_token_ids()
        if self.seed is not None and not (_is_int(self.seed) and INT64_MIN <= self.seed <= INT64_MAX):
            raise ValueError(f"SamplingParams.seed must be None or an int64, got {self.seed!r}")
        if not _is_int(self.logprobs) or not 0 <= self.logprobs <= MAX_TOP_LOGPROBS:
            raise ValueError(f"SamplingParams.logprobs must be an int in [0, {MAX_TOP_LOGPROBS}], got {self.logprobs!r}")

    def _check_stop_token_ids(self) -> None:
        if isinstance(self.stop_token_ids, (str, bytes)) or not hasattr(self.stop_token_ids, "__iter__"):
            raise ValueError(f"SamplingParams.stop_token_ids must be a sequence of token ids, "
                             f"got {self.stop_token_ids!r}")
        ids = tuple(self.stop_token_ids)
        bad = [t for t in ids if not _is_int(t) or t < 0]
        if bad:
            raise ValueError(f"SamplingParams.stop_token_ids must be non-negative ints, got {bad!r} "
                             f"in {self.stop_token_ids!r}")
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in ids))  # hashable, whatever was passed

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @classmethod
    def r1_rollout(cls, **overrides) -> SamplingParams:
        """R1-Zero / R1 stage-1 RL rollouts: G = 16 samples at temperature 1.0, no truncation, 32,768 tokens.

        Stage-2 RL used temperature 0.7: `SamplingParams.r1_rollout(temperature=0.7)`."""
        return cls(**{"n": R1_GROUP_SIZE, "temperature": 1.0, "top_p": 1.0, "top_k": 0,
                      "max_new_tokens": R1_MAX_NEW_TOKENS, **overrides})

    @classmethod
    def r1_evaluation(cls, **overrides) -> SamplingParams:
        """R1 evaluation: temperature 0.6, top-p 0.95, 32,768 tokens; set n to the k of pass@1 (4–64)."""
        return cls(**{"temperature": 0.6, "top_p": 0.95, "top_k": 0,
                      "max_new_tokens": R1_MAX_NEW_TOKENS, **overrides})
