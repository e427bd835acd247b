"""Independent float64 reference of the truncated sampling distribution, written per row with Python loops.

Top-k then top-p (vLLM / Hugging Face order), ties at either boundary kept:
  p = softmax(x / T); top-k keeps x >= the k-th largest x; renormalise; top-p walks tokens from the most
  likely down until the mass reaches top_p, then keeps every token whose logit is >= the last one taken."""
import math

import torch


def reference_distribution(logits_V, temperature: float, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    x = [float(v) for v in logits_V.double()]
    V = len(x)
    if temperature == 0:
        best = max(range(V), key=lambda v: (x[v], -v))  # argmax, lowest id on ties
        return torch.tensor([1.0 if v == best else 0.0 for v in range(V)], dtype=torch.float64)
    m = max(x)
    p = [math.exp((xv - m) / temperature) for xv in x]
    if 0 < top_k < V:
        kth = sorted(x, reverse=True)[top_k - 1]
        p = [pv if xv >= kth else 0.0 for pv, xv in zip(p, x)]
    p = _normalised(p)
    if top_p < 1:
        mass, last = 0.0, None
        for v in sorted(range(V), key=lambda v: -p[v]):
            mass, last = mass + p[v], v
            if mass >= top_p:
                break
        p = _normalised([pv if xv >= x[last] else 0.0 for pv, xv in zip(p, x)])
    return torch.tensor(p, dtype=torch.float64)


def _normalised(p):
    total = math.fsum(p)
    return [pv / total for pv in p]


def reference_logprob(logits_V, temperature: float, token: int) -> float:
    """log_softmax(x / T)[token] in float64, T = 1 for greedy, no truncation."""
    t = temperature if temperature > 0 else 1.0
    return torch.log_softmax(logits_V.double() / t, dim=0)[token].item()
