"""Training on Megatron-Core: DDP, optimizer and LR schedule builders, the train step, distributed checkpoints."""
