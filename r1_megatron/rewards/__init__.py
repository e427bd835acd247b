"""Rule-based rewards (R1): math accuracy, template format, language consistency, code by test execution,
and the process-pool runner that applies them with hard timeouts."""
from .code_reward import AssertTest, StdioTest, code_tests, last_code_block, parse_test_cases
from .language_reward import language_consistency
from .math_reward import math_accuracy
from .registry import get_reward, register_reward, reward_names
from .runner import RewardBatch, RewardConfig, RewardRunner
from .sandbox import SandboxConfig, SandboxResult, run_python
from .template_format import format_reward

__all__ = [
    "AssertTest", "StdioTest", "code_tests", "last_code_block", "parse_test_cases", "language_consistency",
    "math_accuracy", "get_reward", "register_reward", "reward_names", "RewardBatch", "RewardConfig",
    "RewardRunner", "SandboxConfig", "SandboxResult", "run_python", "format_reward",
]
