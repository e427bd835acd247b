"""The typed unit of one forward/backward: `MicroBatch`, the same for SFT and RL, padded or packed.

Row b holds one sequence (padded) or several (packed). For every position t of a row:
    input_ids[b, t] -> the model predicts labels[b, t] (the next token), counted in the loss where loss_mask[b, t] > 0;
    position_ids[b, t] is the token's position within its own sequence (0 at each sequence start);
    segment_ids[b, t] names the sequence the token belongs to (1, 2, ... within the row; 0 = padding), and
    attention never crosses segments.
`segment_ids` None means one sequence per row starting at position 0 (plain causal attention; position_ids then
default to 0..T-1). Per-token extras ([B, T] or [B, T, ...], e.g. the GRPO rollout's old log-probabilities, or the
experts each token was routed to [B, T, L, k]) are padded and moved with the rest (integer ones pad with -1, "no
value"; float ones with 0); per-row extras ([B], e.g. a validity flag) keep their shape.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F


@dataclasses.dataclass
class MicroBatch:
    input_ids: torch.Tensor  # [B, T] int64
    labels: torch.Tensor  # [B, T] int64 (the next token; any id where loss_mask is 0)
    loss_mask: torch.Tensor  # [B, T] float: 1 where the label counts (or a per-token weight)
    position_ids: torch.Tensor | None = None  # [B, T] int64; None: 0..T-1 in every row
    segment_ids: torch.Tensor | None = None  # [B, T] int64, 0 = padding; None: one sequence per row
    extras: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)  # [B, T] per token or [B] per row

    def __post_init__(self):
        shape = tuple(self.input_ids.shape)
        if len(shape) != 2:
            raise ValueError(f"MicroBatch.input_ids must be [B, T], got shape {shape}")
        for name in ("labels", "loss_mask", "position_ids", "segment_ids"):
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != shape:
                raise ValueError(f"MicroBatch.{name} has shape {tuple(value.shape)}, input_ids {shape}")
        for name, value in self.extras.items():
            if tuple(value.shape[:1]) != shape[:1] or (value.dim() >= 2 and value.shape[1] != shape[1]):
                raise ValueError(f"MicroBatch.extras[{name!r}] has shape {tuple(value.shape)}: expected [B], "
                                 f"[B, T] or [B, T, ...] for input_ids {shape}")

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.input_ids.shape)

    @property
    def packed(self) -> bool:
        return self.segment_ids is not None

    def positions(self) -> torch.Tensor:
        """[B, T] position of each token within its sequence."""
        if self.position_ids is not None:
            return self.position_ids
        B, T = self.shape
        return torch.arange(T, device=self.input_ids.device).unsqueeze(0).expand(B, T)

    def map(self, fn) -> MicroBatch:
        """fn applied to every tensor (e.g. `lambda t: t.to(device)`)."""
        opt = lambda t: None if t is None else fn(t)  # noqa: E731
        return MicroBatch(fn(self.input_ids), fn(self.labels), fn(self.loss_mask), opt(self.position_ids),
                          opt(self.segment_ids), {k: fn(v) for k, v in self.extras.items()})

    def to(self, device) -> MicroBatch:
        return self.map(lambda t: t.to(device))

    def split_rows(self, rows: int) -> list[MicroBatch]:
        """Micro-batches of ``rows`` consecutive rows each (views of these tensors; the last may be shorter)."""
        return [self.map(lambda t, b=b: t[b:b + rows]) for b in range(0, self.shape[0], rows)]

    def pad_to(self, T: int) -> MicroBatch:
        """Right-padded to length T: padding has loss mask 0, segment 0 (attends to nothing real), label 0;
        its positions continue the row's count so rotary tables stay in range."""
        B, T0 = self.shape
        if T < T0:
            raise ValueError(f"MicroBatch.pad_to({T}): the batch is already {T0} long")
        if T == T0:
            return self
        pad = lambda t: _pad_tokens(t, T - T0)  # noqa: E731
        positions = None
        if self.position_ids is not None:
            tail = self.position_ids[:, -1:] + torch.arange(1, T - T0 + 1, device=self.position_ids.device)
            positions = torch.cat([self.position_ids, tail], dim=1)
        return MicroBatch(pad(self.input_ids), pad(self.labels), pad(self.loss_mask), positions,
                          None if self.segment_ids is None else pad(self.segment_ids),
                          {k: pad(v) for k, v in self.extras.items()})

    def pad_to_multiple(self, multiple: int) -> MicroBatch:
        """Right-padded so T is a multiple of `multiple` (sequence parallelism splits T over TP ranks)."""
        T = self.shape[1]
        return self.pad_to(T + (-T) % multiple)


def _pad_tokens(t: torch.Tensor, extra: int) -> torch.Tensor:
    """[B, T, ...] -> [B, T + extra, ...] (integers padded with -1 beyond the 2-D fields, floats with 0); [B] as is."""
    if t.dim() == 1:
        return t
    if t.dim() == 2:
        return F.pad(t, (0, extra))
    fill = 0 if t.is_floating_point() else -1
    return torch.cat([t, t.new_full((t.shape[0], extra, *t.shape[2:]), fill)], dim=1)
