"""`save_hf`: the model as an HF checkpoint directory, written from any TP/PP/EP/DP layout by all ranks together.

Each TP piece of each tensor of the whole model has one owner: its first data-parallel replica and, for a tensor
that tensor parallelism replicates rather than splits, the first rank of its (expert) tensor-parallel group. The
owners check their pieces for NaN/Inf and describe them to rank 0; rank 0 then asks each owner for its pieces one
at a time, in rule-table order, over the world gloo group (whatever the main backend), assembles the whole HF
tensors through the table's transforms and streams them into safetensors shards of at most `max_shard_bytes`: it
holds about one shard at a time, never the whole model. Everything goes into a temporary directory renamed into
place at the end (removed on a failure). Rank 0 then releases every rank, whether it succeeded or failed, and
broadcasts the outcome (the path, or the error), so every rank returns or raises the same and none is left
waiting. One process runs the same code, sending nothing.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from safetensors.torch import save_file

from r1_megatron.models.gpt import R1GPTModel
from r1_megatron.models.hf_checkpoint import CheckpointError, _local_tensors
from r1_megatron.models.hf_config import model_config_to_hf
from r1_megatron.models.hf_weights import TensorRule, weight_rules
from r1_megatron.models.placement import Placement, Shard
from r1_megatron.runtime import ensure_parallel_state, world_gloo_group
from r1_megatron.tokenizer import load_tokenizer

# Everything transformers' tokenizer save_pretrained may write (transformers 5 keeps the chat template in
# chat_template.jinja, processors in chat_template.json, extra named templates in additional_chat_templates/).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json")
CHAT_TEMPLATE_DIR = "additional_chat_templates"
TOKEN_ID_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id")
_MAX_SHARD_BYTES = 5 * 2**30
_GO, _END = 1, 0  # rank 0's commands to the other ranks: send your next piece / the export is over
# How long a rank waits for rank 0's next command. Rank 0 may write for a long time (a 671B model is 1.3 TB) before
# it asks a rank for its first piece, far longer than the process group's collective timeout; if rank 0 dies
# instead, its connections close and the wait ends at once.
_COMMAND_WAIT = datetime.timedelta(hours=24)


@dataclass(frozen=True)
class _Piece:
    """One owned piece as rank 0 sees it: TP part `part` of `parts` (along `dim`) of the whole model's Megatron
    tensor `name`, and the HF tensors to which it contributes NaN/Inf."""

    name: str
    part: int
    parts: int
    dim: int
    shape: tuple[int, ...]
    dtype: torch.dtype
    non_finite: tuple[str, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def _owns(tensor: torch.Tensor, shard: Shard | None) -> bool:
    """Whether this rank is the one that exports its copy of `tensor` (data-parallel replicas send nothing)."""
    if getattr(tensor, "allreduce", True) is False:  # an expert parameter (the mark placement.shard reads too)
        dp, tp = parallel_state.get_expert_data_parallel_rank(), parallel_state.get_expert_tensor_parallel_rank()
    else:
        dp, tp = parallel_state.get_data_parallel_rank(), parallel_state.get_tensor_model_parallel_rank()
    return dp == 0 and (shard is not None or tp == 0)


def _non_finite(rule: TensorRule, shard: Shard | None, tensor: torch.Tensor) -> tuple[str, ...]:
    """The HF tensors to which this piece brings NaN/Inf, checked where the weights are (on their device)."""
    if bool(torch.isfinite(tensor).all()):
        return ()
    if shard is not None and not rule.transform.componentwise(shard):
        return rule.hf
    return tuple(name for name, hf in zip(rule.hf, rule.transform.to_hf(tensor)) if not bool(torch.isfinite(hf).all()))


def _owned_pieces(model: R1GPTModel, rules: dict[str, TensorRule]) -> list[tuple[_Piece, torch.Tensor]]:
    """This rank's pieces to export, in the order rank 0 asks for them (rule table, then TP part)."""
    placement, order = Placement.of_this_rank(model), {name: i for i, name in enumerate(rules)}
    owned = []
    for local, tensor in _local_tensors(model).items():
        name = placement.global_name(local)
        if name not in rules:
            if name == "output_layer.weight" and model.model_config.tie_word_embeddings:
                continue  # the last pipeline stage's copy of the shared embedding; the first stage's is exported
            raise CheckpointError(f"save_hf: Megatron tensor '{name}' has no HF mapping (config mismatch?)")
        shard = placement.shard(tensor)
        if _owns(tensor, shard):
            part, parts, dim = (shard.rank, shard.world, shard.dim) if shard else (0, 1, 0)
            piece = _Piece(name, part, parts, dim, tuple(tensor.shape), tensor.dtype,
                           _non_finite(rules[name], shard, tensor))
            owned.append((piece, tensor))
    return sorted(owned, key=lambda item: (order[item[0].name], item[0].part))


def _as_bytes(tensor: torch.Tensor) -> torch.Tensor:
    """A host copy as raw bytes: any dtype (bf16, fp8) crosses gloo and is reinterpreted on arrival."""
    return tensor.detach().to("cpu").contiguous().view(-1).view(torch.uint8)


class _Requests:
    """Rank 0's side of the transfer: asks an owner for its next piece and receives it."""

    def __init__(self, group, local: dict[tuple[str, int], torch.Tensor]):
        self.group, self.local = group, local

    def fetch(self, rank: int, piece: _Piece) -> torch.Tensor:
        if rank == 0:
            return self.local[(piece.name, piece.part)].detach().cpu()
        dist.send(torch.tensor([_GO]), dst=rank, group=self.group)
        raw = torch.empty(piece.nbytes, dtype=torch.uint8)
        dist.recv(raw, src=rank, group=self.group)
        return raw.view(piece.dtype).reshape(piece.shape)

    def end(self) -> None:
        """Release every other rank, whether rank 0 succeeded or failed: none will be asked for more."""
        for rank in range(1, dist.get_world_size()):
            dist.send(torch.tensor([_END]), dst=rank, group=self.group)


def _serve(owned: list[tuple[_Piece, torch.Tensor]], group) -> None:
    """A rank other than 0: send its pieces one by one as rank 0 asks for them, until rank 0 ends the export."""
    command, pieces = torch.empty(1, dtype=torch.long), iter(owned)
    while True:
        dist.irecv(command, src=0, group=group).wait(timeout=_COMMAND_WAIT)
        if command.item() == _END:
            return
        dist.send(_as_bytes(next(pieces)[1]), dst=0, group=group)


def _owners(manifests: list) -> dict[str, dict[int, tuple[int, _Piece]]]:
    """{Megatron name: {TP part: (owner rank, piece)}}; an error any rank met is raised here."""
    owners: dict[str, dict[int, tuple[int, _Piece]]] = {}
    for rank, (pieces, error) in enumerate(manifests):
        if error is not None:
            raise error
        for piece in pieces:
            parts = owners.setdefault(piece.name, {})
            if piece.part in parts:
                raise CheckpointError(f"save_hf: TP part {piece.part} of '{piece.name}' is owned by both rank "
                                      f"{parts[piece.part][0]} and rank {rank}")
            parts[piece.part] = (rank, piece)
    return owners


def _plan(target: Path, rules: list[TensorRule], manifests: list) -> dict[str, list[tuple[int, _Piece]]]:
    """(owner, piece) of every TP part of every tensor, in order; a missing part or a NaN/Inf is refused here,
    before anything is written."""
    owners, plan = _owners(manifests), {}
    for rule in rules:
        parts = owners.get(rule.megatron, {})
        count = next(iter(parts.values()))[1].parts if parts else 1
        missing = sorted(set(range(count)) - set(parts))
        if missing:
            raise CheckpointError(f"save_hf: no rank holds TP part(s) {missing} of Megatron '{rule.megatron}'")
        plan[rule.megatron] = [parts[i] for i in range(count)]
    for rule in rules:
        for _, piece in plan[rule.megatron]:
            if piece.non_finite:
                raise ValueError(f"save_hf {target}: tensor '{piece.non_finite[0]}' (Megatron '{piece.name}') "
                                 "contains NaN or Inf; refusing to export non-finite weights, nothing was written")
    return plan


class _ShardWriter:
    """Streams tensors into safetensors files of at most `max_bytes` each (a bigger tensor gets a file of its own),
    writing a file as soon as the next tensor would not fit; files get their final names once their count is
    known, with model.safetensors.index.json when there are several."""

    def __init__(self, directory: Path, max_bytes: int):
        self.directory, self.max_bytes = directory, max_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes, self.total_bytes = 0, 0
        self.files: list[list[str]] = []  # tensor names per written file

    def add(self, name: str, tensor: torch.Tensor) -> None:
        nbytes = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + nbytes > self.max_bytes:
            self._flush()
        # an own contiguous copy: pieces may be views of the model's weights or of each other (fc1's gate/up)
        self.pending[name] = tensor.clone(memory_format=torch.contiguous_format)
        self.pending_bytes += nbytes
        self.total_bytes += nbytes

    def _flush(self) -> None:
        save_file(self.pending, self.directory / self._temporary(len(self.files)), metadata={"format": "pt"})
        self.files.append(list(self.pending))
        self.pending, self.pending_bytes = {}, 0

    @staticmethod
    def _temporary(index: int) -> str:
        return f"part-{index:05d}.safetensors.tmp"

    def finish(self) -> None:
        self._flush()
        if len(self.files) == 1:
            (self.directory / self._temporary(0)).rename(self.directory / "model.safetensors")
            return
        weight_map = {}
        for i, names in enumerate(self.files):
            file = f"model-{i + 1:05d}-of-{len(self.files):05d}.safetensors"
            (self.directory / self._temporary(i)).rename(self.directory / file)
            weight_map.update(dict.fromkeys(names, file))
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
        (self.directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def _tokenizer_token_ids(directory: Path) -> dict:
    try:
        tokenizer = load_tokenizer(directory)
    except FileNotFoundError:  # a directory without tokenizer files: nothing to learn the ids from
        return {}
    ids = {"bos_token_id": tokenizer.bos_token_id}
    try:  # pad falls back to eos; a tokenizer without eos has neither
        ids.update(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    except ValueError:
        pass
    return ids


def _token_ids(hf_source: Path | None, tokenizer_source: Path | None) -> dict:
    """bos/eos/pad ids for config.json: those of the checkpoint the model was loaded from, the tokenizer's for
    what it does not set (a preset model, like the demo's, has only the tokenizer)."""
    ids = dict.fromkeys(TOKEN_ID_FIELDS)
    if hf_source is not None and (hf_source / "config.json").is_file():
        raw = json.loads((hf_source / "config.json").read_text())
        ids.update((field, raw.get(field)) for field in TOKEN_ID_FIELDS)
    if tokenizer_source is not None and None in ids.values():
        known = {field: value for field, value in ids.items() if value is not None}
        ids.update({**_tokenizer_token_ids(tokenizer_source), **known})
    return ids


def _copy_tokenizer(source: Path | None, directory: Path) -> None:
    if source is None:
        return
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, directory / name)
    if (source / CHAT_TEMPLATE_DIR).is_dir():
        shutil.copytree(source / CHAT_TEMPLATE_DIR, directory / CHAT_TEMPLATE_DIR)


def _write_generation_config(directory: Path, sources: list[Path | None], ids: dict) -> None:
    """The source's generation_config.json, else one with the special ids, so that `generate` stops at EOS."""
    for source in sources:
        if source is not None and (source / "generation_config.json").is_file():
            shutil.copy2(source / "generation_config.json", directory / "generation_config.json")
            return
    known = {field: value for field, value in ids.items() if value is not None}
    if known:
        (directory / "generation_config.json").write_text(json.dumps(known, indent=2))


def _write_metadata(directory: Path, model: R1GPTModel, dtype: torch.dtype, tokenizer_dir) -> None:
    hf_source = getattr(model, "hf_source", None)
    tokenizer_source = Path(tokenizer_dir) if tokenizer_dir else hf_source
    ids = _token_ids(hf_source, tokenizer_source)
    config = {**model_config_to_hf(model.model_config, str(dtype).removeprefix("torch.")), **ids}
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    _copy_tokenizer(tokenizer_source, directory)
    _write_generation_config(directory, [hf_source, tokenizer_source], ids)


def _replace_directory(tmp: Path, target: Path) -> None:
    """Swap `tmp` in as `target`; an existing target is removed only after the new one is in place."""
    old = target.with_name(target.name + f".old-{os.getpid()}")
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def _write(model: R1GPTModel, target: Path, manifests: list, owned, group, tokenizer_dir,
           max_shard_bytes: int) -> Path:
    """Rank 0: fetch, assemble and write every tensor, then config, tokenizer and generation config."""
    requests = _Requests(group, {(piece.name, piece.part): t for piece, t in owned})
    tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
    try:
        rules = weight_rules(model.model_config)
        plan = _plan(target, rules, manifests)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        writer = _ShardWriter(tmp, max_shard_bytes)
        for rule in rules:
            sources = plan[rule.megatron]
            pieces = [requests.fetch(rank, piece) for rank, piece in sources]
            for name, tensor in zip(rule.hf, rule.assemble(pieces, sources[0][1].dim)):
                writer.add(name, tensor)
        writer.finish()
        _write_metadata(tmp, model, plan[rules[0].megatron][0][1].dtype, tokenizer_dir)
        _replace_directory(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        requests.end()
    return target


def transferable_error(exc: BaseException) -> BaseException:
    """`exc` itself if it survives pickling (to reach the other ranks), else a RuntimeError with its text."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def _describe_owned(model: R1GPTModel):
    """(this rank's owned pieces with their tensors, its manifest for rank 0: (pieces, error or None))."""
    try:
        owned = _owned_pieces(model, {rule.megatron: rule for rule in weight_rules(model.model_config)})
    except Exception as exc:  # reported through rank 0, so that no rank waits on one that gave up
        return [], ([], transferable_error(exc))
    return owned, ([piece for piece, _ in owned], None)


@torch.no_grad()
def save_hf(model: R1GPTModel, path: str | os.PathLike, *, tokenizer_dir: str | os.PathLike | None = None,
            max_shard_bytes: int = _MAX_SHARD_BYTES, writer_stats: dict | None = None) -> Path:
    """Write the whole model as an HF checkpoint directory that transformers loads; returns the directory.

    Collective: every rank calls it, at any TP/PP/EP/DP layout; rank 0 writes. Tokenizer files (and the chat
    template) are copied from `tokenizer_dir`, or from the directory the model was loaded from; config.json gets
    the bos/eos/pad ids. Weights with NaN/Inf are refused (ValueError naming the tensor) and nothing is written.
    `writer_stats`, if given, receives {"bytes_owned": ...}: the bytes of the model this rank contributed.
    """
    ensure_parallel_state()
    group, rank = world_gloo_group(), dist.get_rank()
    owned, manifest = _describe_owned(model)
    manifests = [None] * dist.get_world_size() if rank == 0 else None
    dist.gather_object(manifest, manifests, dst=0, group=group)
    outcome: object = None
    if rank == 0:
        try:
            outcome = _write(model, Path(path), manifests, owned, group, tokenizer_dir, max_shard_bytes)
        except Exception as exc:
            outcome = exc
    else:
        _serve(owned, group)
    shared = [transferable_error(outcome) if isinstance(outcome, Exception) else outcome]
    dist.broadcast_object_list(shared, src=0, group=group)
    if writer_stats is not None:
        writer_stats["bytes_owned"] = sum(piece.nbytes for piece, _ in owned)
    if isinstance(shared[0], Exception):
        raise (outcome if rank == 0 else shared[0])
    return shared[0]
