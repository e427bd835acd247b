"""The adversarial corpus: inputs a policy under RL, a hostile dataset or a broken run can produce, each with its
expected outcome asserted (0 forged passes, 0 channels open, bounded time and memory, nothing lost or left
behind). One file per area; a fixed hole gets a case here so it stays fixed."""
