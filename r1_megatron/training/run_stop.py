"""The errors with which a run stops itself on purpose (a diverged run, a checkpoint that cannot be written): each
message is one line saying why and what was kept; `r1-megatron` prints it and exits 2. No torch here: the CLI
imports this before any command runs."""


class RunStopped(RuntimeError):
    """A run stopped with a one-line reason (no traceback is needed to act on it)."""
