"""A pipeline recipe is checked before any stage runs: references name earlier stages and outputs their commands
produce, every stage's section builds as its command's config, a finished stage's config must not change; each
problem is one line naming the recipe line, the stage and the key. Nothing here runs a stage."""
import json

import pytest

from r1_megatron.pipeline.plan import STAGE_CONFIG, STAGE_RECORD, Pipeline
from r1_megatron.run_config import ConfigError
from tests.pipeline.micro_recipe import micro_recipe


@pytest.fixture
def recipe(tmp_path):
    return micro_recipe(tmp_path, tmp_path / "run")


def line_of(recipe, text: str) -> int:
    return next(i for i, line in enumerate(recipe.read_text().splitlines(), 1) if text in line)


def refused(recipe, *overrides) -> str:
    with pytest.raises(ConfigError) as e:
        Pipeline(recipe, overrides).validate()
    message = str(e.value)
    assert "\n" not in message
    return message


def test_a_valid_recipe_builds_every_stage_as_its_command_config(recipe, tmp_path):
    pipeline = Pipeline(recipe)
    pipeline.validate()
    assert not (tmp_path / "run").exists()  # validation writes nothing
    cfg = pipeline.stage_config(pipeline.stages[1], {("base", "model"): "/models/base"})
    assert type(cfg).__name__ == "SFTRunConfig" and cfg.model.path == "/models/base"
    assert cfg.run_dir == str(tmp_path / "run" / "stages" / "middle") and cfg.seed == 3  # the pipeline's seed
    assert [s.evaluated for s in pipeline.stages] == [False, False, True]


def test_a_reference_to_no_stage_names_the_line_stage_and_key(recipe):
    message = refused(recipe, "stages.middle.config.model.path=${bse.model}")
    assert message == ("command line: stages.middle.config.model.path: ${bse.model} names no stage "
                       "(earlier stages: base)")
    recipe.write_text(recipe.read_text().replace("${middle.model}", "${midle.model}"))
    message = refused(recipe)
    assert message.startswith(f"{recipe}:{line_of(recipe, '${midle.model}')}: stages.final.config.model.path: "
                              "${midle.model} names no stage"), message


@pytest.mark.parametrize("override, message", [
    ("stages.base.config.model={path: '${final.model}'}",
     "stages.base.config.model.path: ${final.model} names a stage that runs at or after this point (earlier "
     "stages: none)"),
    ("stages.final.config.model.path=${base.samples}",
     "stages.final.config.model.path: ${base.samples}: stage 'base' produces no output 'samples' (its outputs: "
     "model, checkpoint, tokenizer)"),
    ("stages.final.config.data.tokenizer=x/${base}/y", "stages.final.config.data.tokenizer: ${base} is not a "
                                                       "reference of the form ${STAGE.OUTPUT}"),
    ("eval.benchmarks.file=${final.model}", "eval.benchmarks.file: ${final.model} names a stage that runs at or "
                                            "after this point (earlier stages: base, middle)"),
    ("stages.final.config.training.epocs=2", "unknown key 'stages.final.config.training.epocs' (did you mean "
                                             "'epochs'?)"),
    ("stages.final.config.training.batch_size=0", "stages.final.config.training.batch_size must be a positive "
                                                  "integer, got 0"),
    ("stages.final.config.run_dir=elsewhere", "stages.final.config.run_dir: set by the pipeline (the stage "
                                              "directory"),
    ("stages.final.command=trian", "stages.final.command: 'trian' is not a stage command (one of: grpo, sft, "
                                   "sample, eval, toy_data)"),
    ("stages.final.recipe=missing.yaml", "stages.final.recipe: "),
    ("eval.sampling.k=0", "sampling.k must be an integer >= 1"),
    ("stages.base.config.checkpoint.export_hf=false", "stages.base.config.checkpoint.export_hf: must be true: "
                                                      "stage middle reads its HF model"),
    ("stages.final.config.checkpoint.export_hf=false", "stages.final.config.checkpoint.export_hf: must be true: "
                                                       "the pipeline evaluates its HF model"),
])
def test_bad_input_is_one_line_naming_the_stage_and_key(recipe, override, message):
    found = refused(recipe, override)
    assert found.startswith("command line") and message in found, found


def test_a_stage_config_section_over_a_base_recipe(recipe, tmp_path):
    (tmp_path / "base_sft.yaml").write_text("training:\n  steps: 9\n  epochs: 1.0\noptimizer:\n  lr: 0.5\n")
    data = json.loads(recipe.read_text())
    data["stages"]["final"]["recipe"] = "base_sft.yaml"  # relative to the pipeline recipe
    del data["stages"]["final"]["config"]["training"]["steps"]
    recipe.write_text(json.dumps(data, indent=1))
    pipeline = Pipeline(recipe)
    cfg = pipeline.stage_config(pipeline.stages[2], {("middle", "model"): "/m"})
    assert (cfg.training.steps, cfg.training.epochs, cfg.optimizer.lr) == (9, 1.0, 3.0e-3)  # the stage's lr wins
    (tmp_path / "base_sft.yaml").write_text("training:\n  steps: -1\n")
    message = refused(recipe)
    assert message.startswith(f"{tmp_path / 'base_sft.yaml'}:2: stages.final.config.training.steps must be >= 0")


def test_a_finished_stage_whose_config_changed_is_refused_naming_the_key(recipe, tmp_path):
    pipeline = Pipeline(recipe)
    base = pipeline.stages[0]
    base.dir.mkdir(parents=True)
    record = pipeline.stage_record(base, pipeline.stage_config(base, {}), None)
    (base.dir / STAGE_CONFIG).write_text(json.dumps(record))
    outputs = {"model": str(tmp_path), "checkpoint": str(tmp_path), "tokenizer": str(tmp_path)}
    (base.dir / STAGE_RECORD).write_text(json.dumps({"stage": "base", "outputs": outputs}))
    Pipeline(recipe).validate()  # unchanged: fine
    message = refused(recipe, "stages.base.config.optimizer.lr=0.1")
    assert message == (f"command line: stages.base.config.optimizer.lr: the finished stage ran with 0.003, the "
                       f"recipe now says 0.1 (delete {base.dir} to run the stage again)")
    # a later stage's reference resolves to the finished stage's recorded output
    assert Pipeline(recipe).stage_config(pipeline.stages[1], {("base", "model"): outputs["model"]}).model.path == \
        str(tmp_path)


def test_a_command_whose_module_is_missing_matters_only_when_a_recipe_uses_it(recipe, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_toy_task(name, *args, **kwargs):
        if name.endswith("pipeline.toy_task"):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_toy_task)
    Pipeline(recipe).validate()  # no toy_data stage
    message = refused(recipe, "stages.assets={command: toy_data}")
    assert "stages.assets.command: toy_data: its module is not available" in message, message


def test_the_docs_worked_example_validates(tmp_path, monkeypatch):
    from tests.doc_examples import doc_examples

    (tmp_path / "micro.yaml").write_text(doc_examples("pipeline.md")["micro_pipeline"])
    monkeypatch.chdir(tmp_path)  # its relative paths
    pipeline = Pipeline("micro.yaml")
    pipeline.validate()
    assert [(s.name, s.spec.command, s.evaluated) for s in pipeline.stages] == [
        ("cold_start", "sft", False), ("rejection_sampling", "sample", False), ("sft_from_cold_start", "sft", True)]


def test_a_bad_reference_in_a_list_given_on_the_command_line_names_the_command_line(recipe):
    message = refused(recipe, 'stages.final.config.data.paths=["${base.samples}"]')
    assert message.startswith("command line: stages.final.config.data.paths[0]: ${base.samples}: stage 'base' "
                              "produces no output 'samples'"), message
