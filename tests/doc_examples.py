"""The worked examples of the docs: each fenced block right after a `<!-- example: NAME -->` line, by NAME, so
tests run what the docs show (as .ci/run does for the README's quickstart)."""
import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_EXAMPLE = re.compile(r"<!-- example: (?P<name>[^>]+?) -->\n(?P<fence>`{3,})[^\n]*\n(?P<body>.*?)\n(?P=fence)\n",
                      re.DOTALL)


def doc_examples(page: str) -> dict[str, str]:
    """{NAME: block text} of docs/`page`."""
    return {m["name"]: m["body"] + "\n" for m in _EXAMPLE.finditer((ROOT / "docs" / page).read_text())}


def train_command(command: str) -> tuple[str | None, list[str]]:
    """(--config, key=value overrides) of a documented `r1-megatron train grpo` line (environment settings and
    line continuations allowed)."""
    words = shlex.split(command.replace("\\\n", " "))
    while "=" in words[0]:  # PYTHONPATH=. before the command
        words.pop(0)
    assert words[:3] == ["r1-megatron", "train", "grpo"], words
    words, config = words[3:], None
    if words[:1] == ["--config"]:
        config, words = str(ROOT / words[1]), words[2:]
    return config, words
