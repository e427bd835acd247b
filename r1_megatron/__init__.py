"""r1_megatron: DeepSeek-R1-style reasoning RL (GRPO) on Megatron-Core."""

__version__ = "0.1.0"
