"""A pipeline recipe read and checked before any stage runs: every `${STAGE.OUTPUT}` names an earlier stage and
an output of its command; every stage's section builds as its command's typed config (references replaced by the
paths their outputs will have: an empty stand-in for an output not produced yet), so a threshold out of range or
a missing directory fails now; a finished (or resumable) stage's config must equal the one it ran with. Every
problem is one ConfigError line naming the recipe line, the stage and the key."""
from __future__ import annotations

import dataclasses
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Mapping

from r1_megatron.run_config import ConfigError, build_config, config_to_dict, read_recipe

from .config import PipelineConfig, PipelineEvalConfig, StageSpec
from .references import check_references, deep_merge, dotted, first_difference, references_in, substitute
from .stages import STAGE_KINDS, StageKind

STAGE_RECORD, STAGE_CONFIG = "stage.json", "stage_config.json"  # a finished stage's result; what a stage runs with

Paths = Mapping[tuple[str, str], str]  # (stage, output) -> path


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    spec: StageSpec
    kind: StageKind
    dir: Path
    evaluated: bool

    @property
    def key(self) -> tuple:
        return ("stages", self.name, "config")

    def finished(self) -> dict | None:
        """The stage's record when it finished in an earlier run (STAGE_DIR/stage.json), else None."""
        path = self.dir / STAGE_RECORD
        return json.loads(path.read_text()) if path.is_file() else None


class Pipeline:
    def __init__(self, path: str | os.PathLike | None = None, overrides=()):
        recipe = Path(PipelineConfig.DEFAULT_RECIPE if path is None else path)
        data, self.sources, self.name = read_recipe(recipe, overrides, name=recipe.name if path is None else None)
        self.recipe_dir = recipe.resolve().parent
        self.cfg: PipelineConfig = build_config(PipelineConfig, data, self.sources, self.name)
        self.run_dir = Path(self.cfg.run_dir)
        self.stages = [self._stage(name, spec) for name, spec in self.cfg.stages.items()]
        self._check_references()

    def _stage(self, name: str, spec: StageSpec) -> Stage:
        kind = STAGE_KINDS.get(spec.command)
        if kind is None:
            self.fail(("stages", name, "command"), f"{spec.command!r} is not a stage command (one of: "
                                                   f"{', '.join(STAGE_KINDS)})")
        if spec.eval and not kind.produces_model:
            self.fail(("stages", name, "eval"), f"a {spec.command} stage produces no model to evaluate")
        evaluated = kind.produces_model if spec.eval is None else spec.eval
        if evaluated and self.cfg.eval is None and spec.eval:
            self.fail(("stages", name, "eval"), "true, but the pipeline has no eval section")
        return Stage(name, spec, kind, self.run_dir / "stages" / name, evaluated and self.cfg.eval is not None)

    # ------------------------------------------------------------------------------------------- messages

    def source(self, key: tuple) -> str:
        for n in range(len(key), 0, -1):
            if key[:n] in self.sources:
                return self.sources[key[:n]]
        return self.name

    def fail(self, key: tuple, message: str):
        raise ConfigError(f"{self.source(key)}: {dotted(key)}: {message}")

    # ------------------------------------------------------------------------------------------- references

    def _check_references(self) -> None:
        earlier: dict[str, tuple[str, ...]] = {}
        names = [s.name for s in self.stages]
        for i, stage in enumerate(self.stages):
            self._checked(check_references, stage.spec.config, stage.key, earlier, names[i:])
            earlier[stage.name] = tuple(stage.kind.outputs)
        first = next((i for i, s in enumerate(self.stages) if s.evaluated), len(self.stages))
        before = {s.name: tuple(s.kind.outputs) for s in self.stages[:first]}
        self._checked(check_references, self.cfg.eval or {}, ("eval",), before, names[first:])

    def _checked(self, check, value, key: tuple, *args) -> None:
        try:
            check(value, key, *args)
        except ValueError as e:
            where = re.sub(r"\[\d+\]", "", str(e).partition(":")[0])  # paths[0] was written where paths was
            raise ConfigError(f"{self.source(tuple(where.split('.')))}: {e}") from None

    # ------------------------------------------------------------------------------------------- configs

    def stage_config(self, stage: Stage, paths: Paths):
        """The stage's typed config: its base recipe, its section over it with references replaced, the stage
        directory as its run_dir/out and the pipeline's seed unless it sets one."""
        config = stage.spec.config
        if stage.kind.dir_key in config:
            self.fail(stage.key + (stage.kind.dir_key,), f"set by the pipeline (the stage directory {stage.dir})")
        base, sources = {}, dict(self.sources)
        if stage.spec.recipe is not None:
            recipe = Path(stage.spec.recipe)
            recipe = recipe if recipe.is_absolute() else self.recipe_dir / recipe
            try:
                base, base_sources, _ = read_recipe(recipe)
            except ConfigError as e:
                self.fail(("stages", stage.name, "recipe"), str(e))
            sources = {**{stage.key + k: v for k, v in base_sources.items()}, **self.sources}
        data = deep_merge(base, substitute(config, paths))
        if stage.kind.dir_key is not None:
            data[stage.kind.dir_key] = str(stage.dir)
        try:
            cls = stage.kind.load_config()
        except ImportError as e:
            self.fail(("stages", stage.name, "command"), f"{stage.spec.command}: its module is not available ({e})")
        if "seed" in {f.name for f in dataclasses.fields(cls)}:
            data.setdefault("seed", self.cfg.seed)
        try:
            return build_config(cls, data, sources, self.name, stage.key)
        except ConfigError as e:  # a message of the command's own top level names its key without the stage
            where, _, message = str(e).partition(": ")
            if dotted(stage.key) in message:
                raise
            raise ConfigError(f"{where}: {dotted(stage.key)}: {message}") from None

    def eval_config(self, paths: Paths) -> PipelineEvalConfig | None:
        if self.cfg.eval is None:
            return None
        return build_config(PipelineEvalConfig, substitute(self.cfg.eval, paths), self.sources, self.name, ("eval",))

    def stage_record(self, stage: Stage, cfg, eval_cfg: PipelineEvalConfig | None) -> dict:
        """What the stage runs with; a rerun must match it (STAGE_DIR/stage_config.json)."""
        evaluation = None
        if stage.evaluated:
            evaluation = config_to_dict(eval_cfg.run_config(str(stage.dir / "hf"), stage.dir / "eval", self.cfg.seed))
        return {"command": stage.spec.command, "config": config_to_dict(cfg), "eval": evaluation}

    # ------------------------------------------------------------------------------------------- validation

    def validate(self) -> None:
        """Build every stage's config (outputs not produced yet replaced by empty stand-ins) and check the
        stages that ran before against what they ran with."""
        with tempfile.TemporaryDirectory(prefix="r1_pipeline_check_") as scratch:
            paths: dict[tuple[str, str], str] = {}
            for stage in self.stages:
                record = stage.finished()
                cfg = self.stage_config(stage, paths)
                self._check_export(stage, cfg)
                eval_cfg = self.eval_config(paths) if stage.evaluated else None  # its references: earlier stages
                self._check_unchanged(stage, self.stage_record(stage, cfg, eval_cfg), record)
                produced = record["outputs"] if record else stand_ins(stage, Path(scratch))
                paths |= {(stage.name, output): path for output, path in produced.items()}

    def _check_export(self, stage: Stage, cfg) -> None:
        """A model-producing stage (a training run) whose HF export is evaluated or read by a later stage must
        write it (checkpoint.export_hf)."""
        if not stage.kind.produces_model or cfg.checkpoint.export_hf:
            return
        readers = [s.name for s in self.stages for _, _, name, output in references_in(s.spec.config)
                   if name == stage.name and output in ("model", "tokenizer")]
        if stage.evaluated or readers:
            why = f"stage {readers[0]} reads its HF model" if readers else "the pipeline evaluates its HF model"
            self.fail(stage.key + ("checkpoint", "export_hf"), f"must be true: {why}")

    def _check_unchanged(self, stage: Stage, now: dict, record: dict | None) -> None:
        path = stage.dir / STAGE_CONFIG
        if not path.is_file() or not (record or stage.kind.resumable(stage.dir)):
            return  # never ran, or nothing of it is kept: it starts over with the config it has now
        found = first_difference(json.loads(path.read_text()), now)
        if found:
            key, then, later = found
            state = "finished" if record else "interrupted"
            where = {"config": stage.key, "command": ("stages", stage.name), "eval": ("eval",)}[key[0]]
            self.fail(where + key[1:], f"the {state} stage ran with {then!r}, the recipe now says {later!r} "
                                       f"(delete {stage.dir} to run the stage again)")


def stand_ins(stage: Stage, scratch: Path) -> dict[str, str]:
    """An empty directory or file per output of a stage that has not run yet."""
    out = {}
    for name, output in stage.kind.outputs.items():
        path = scratch / stage.name / name
        if output.is_dir:
            path.mkdir(parents=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        out[name] = str(path)
    return out
