"""Bad `r1-megatron sample` settings are refused when the config loads, in one line naming the key."""
import pytest

from r1_megatron.run_config import ConfigError, load_run_config
from r1_megatron.sampling.config import CodeBlocks, Dedup, SampleRunConfig


def load(*overrides):
    return load_run_config(None, list(overrides), cls=SampleRunConfig)


def test_the_built_in_recipe_holds_the_documented_defaults():
    cfg = load()
    assert (cfg.sampling.k, cfg.sampling.temperature, cfg.sampling.top_p) == (4, 0.6, 0.95)  # R1's eval protocol
    assert cfg.keep.require == {"math_accuracy": 1.0} and cfg.keep.max_per_prompt is None
    f = cfg.filters
    assert (f.language.target, f.language.min_consistency, f.max_paragraph_chars) == ("en", 0.95, 1000)
    assert (f.code_blocks, f.dedup) == (CodeBlocks.REJECT, Dedup.NORMALISED)
    assert cfg.rewards.weights == {"math_accuracy": 1.0} and cfg.data is None
    assert SampleRunConfig().filters == f and SampleRunConfig().keep == cfg.keep  # the dataclass defaults agree


@pytest.mark.parametrize("override, key", [
    ("filters.language.min_consistency=1.5", "filters.language.min_consistency must be in [0, 1]"),
    ("filters.language.min_consistency=-0.1", "filters.language.min_consistency must be in [0, 1]"),
    ("filters.language.target=xx", "filters.language.target must be one of"),
    ("filters.max_paragraph_chars=0", "filters.max_paragraph_chars must be a positive integer"),
    ("filters.code_blocks=drop", "filters.code_blocks"),
    ("filters.dedup=fuzzy", "filters.dedup"),
    ("keep.max_per_prompt=0", "keep.max_per_prompt must be a positive integer"),
    ("keep.require={format: 1.0}", "keep.require names 'format', which rewards.weights does not compute"),
    ("sampling.top_p=0", "sampling.top_p must be in (0, 1]"),
    ("sampling.k=0", "sampling.k must be a positive integer"),
    ("limit=0", "limit must be a positive integer"),
    ("data.tokenizer=tok", "data.tokenizer: sample encodes prompts with the model's tokenizer"),
])
def test_a_bad_setting_is_one_line_naming_its_key(override, key):
    extra = ["data.paths=[p.jsonl]"] if override.startswith("data.") else []
    with pytest.raises(ConfigError) as info:
        load(*extra, override)
    message = str(info.value)
    assert key in message and "\n" not in message and "command line" in message.partition(": ")[0]


def test_a_reward_without_its_record_field_is_refused():
    with pytest.raises(ConfigError, match="rewards.weights has code_tests, which reads each record's tests: set "
                                          "data.tests_field"):
        load("data.paths=[p.jsonl]", "rewards.weights={code_tests: 1.0}", "keep.require={code_tests: 1.0}")
