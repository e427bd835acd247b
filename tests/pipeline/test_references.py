"""The pure parts of the pipeline: references found and replaced anywhere in a section, the first difference
between two configs, sections merged as overrides merge, the final table."""
from r1_megatron.pipeline.references import deep_merge, first_difference, references_in, substitute
from r1_megatron.pipeline.report import pipeline_table


def test_references_anywhere_in_a_section_are_found_and_replaced():
    section = {"data": {"paths": ["${a.samples}", "${toy.non_reasoning}"]}, "model": {"path": "${a.model}/x"},
               "steps": 3}
    assert [(k, stage, out) for k, _, stage, out in references_in(section)] == [
        (("data", "paths", 0), "a", "samples"), (("data", "paths", 1), "toy", "non_reasoning"),
        (("model", "path"), "a", "model")]
    paths = {("a", "samples"): "/r/a/s.jsonl", ("toy", "non_reasoning"): "/r/t/n.jsonl", ("a", "model"): "/r/a/hf"}
    assert substitute(section, paths) == {"data": {"paths": ["/r/a/s.jsonl", "/r/t/n.jsonl"]},
                                          "model": {"path": "/r/a/hf/x"}, "steps": 3}
    assert section["model"]["path"] == "${a.model}/x"  # a copy


def test_first_difference_and_merge():
    a = {"x": 1, "y": {"z": [1, 2], "w": "s"}}
    assert first_difference(a, a) is None
    assert first_difference(a, {"x": 1, "y": {"z": [1, 3], "w": "t"}}) == (("y", "z", 1), 2, 3)
    assert first_difference(a, {**a, "v": 0}) == (("v",), None, 0)
    assert deep_merge(a, {"y": {"w": "t"}, "x": [0]}) == {"x": [0], "y": {"z": [1, 2], "w": "t"}}


def test_the_table_has_a_row_per_stage():
    rows = [{"stage": "toy", "command": "toy_data", "wall_s": 2.4, "count": None, "count_name": "assets"},
            {"stage": "distill", "command": "sft", "wall_s": 61.0, "count": 40, "count_name": "steps",
             "eval": {"held_out": {"pass@1": 0.5, "cons@4": 0.75}}, "pass@1_before": 0.125, "skipped": True}]
    assert pipeline_table(rows).splitlines() == [
        "| stage | command | wall time | steps/samples | held-out pass@1 | cons@4 | pass@1 before |",
        "|---|---|---|---|---|---|---|",
        "| toy | toy_data | 2 s | - | - | - | - |",
        "| distill | sft | 61 s (earlier run) | 40 steps | 0.500 | 0.750 | 0.125 |"]
