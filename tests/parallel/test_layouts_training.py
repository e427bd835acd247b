"""One training step gives the same weights on every layout, a packed batch the same loss and gradients;
checkpoints reload at other layouts and resume."""
import pytest
import torch

from r1_megatron.models.hf_export import save_hf
from r1_megatron.runtime import ensure_parallel_state, seed_everything
from r1_megatron.training.step import unwrap
from tests.models import hf_fixtures
from tests.parallel import training_fixtures as tf
from tests.parallel.launch import torchrun

STEP_TOL = 1e-5  # fp32, Adam after one step, different reduction orders
LAYOUT_TOL = 1e-5  # the same weights' logits on two layouts (fp32 reduction order), as in the parity tests
GRAD_TOL = 1e-6  # the same gradients on two layouts (fp32 reduction order)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A 4-layer tiny DeepSeek-V3, the single-process (TP1, 2 micro-batches of 4) updated weights, and the
    single-process loss and gradients of the packed batch (tf.packed_micro_batches)."""
    root = tmp_path_factory.mktemp("training")
    hf_fixtures.deepseek_v3(num_hidden_layers=4).save_pretrained(root / "ckpt")
    ensure_parallel_state()
    seed_everything(0)
    trainer = tf.setup(root / "ckpt")
    tf.step(trainer, 0, dp_rank=0, dp_size=1, micro_batch_size=4)
    save_hf(unwrap(trainer[0]), root / "expected")
    torch.save(torch.randint(0, 160, (2, 7), generator=torch.Generator().manual_seed(7)), root / "probe.pt")
    loss, grads = tf.packed_loss_and_grads(tf.setup(root / "ckpt"), dp_rank=0, dp_size=1)
    torch.save({"loss": loss, "grads": tf.assemble([grads])}, root / "packed_expected.pt")
    return root


RUNS = "tp1:0,tp2ep2:0,tp2ep2:1,pp2:0,pp2:1,dp2:0,dp2:1"


@pytest.fixture(scope="module")
def train_results(workdir):
    """Every rank's results of the one "train" launch (the layouts' steps, the packed batch, the bf16 steps)."""
    return torchrun("train", workdir, nproc=2, extra=(RUNS,))


def test_one_step_is_layout_independent(train_results):
    first = train_results[0]["tp1:0"]
    for rank, result in enumerate(train_results):
        for run in RUNS.split(","):
            assert result[run]["max_diff"] <= STEP_TOL, (rank, run, result[run])
            assert result[run]["loss"] == pytest.approx(first["loss"], rel=1e-6)
            assert result[run]["grad_norm"] == pytest.approx(first["grad_norm"], rel=1e-5)
        losses = result["bf16_losses"]
        assert losses[0] > losses[1] > losses[2], losses


def test_a_loss_nan_on_one_rank_skips_the_update_on_every_rank(train_results):
    """training/step.py: the loss and gradient norm are checked over all ranks (here rank 1's loss only is NaN; at
    TP2 rank 0's own loss is finite), so every rank skips the update together and keeps its weights."""
    for rank, result in enumerate(train_results):
        for case in ("tp2ep2_bf16", "dp2"):
            assert result[f"nan_on_rank_1/{case}"] == {"updated": False, "nonfinite": True, "unchanged": True}, \
                (rank, case)


def test_packed_loss_and_gradients_are_layout_independent(workdir, train_results):
    """Packed rows (3 conversations each, block-diagonal attention, positions restarting) at TP2 (sequence
    parallel, T padded 23 -> 24), PP2 and EP2 (with DP2): the single process's loss and every gradient."""
    expected = torch.load(workdir / "packed_expected.pt")
    scale = max(g.abs().max().item() for g in expected["grads"].values())
    assert scale > 0
    for rank, result in enumerate(train_results):
        for layout in ("tp2", "pp2", "ep2"):
            got = result[f"packed/{layout}"]
            assert got["loss"] == pytest.approx(expected["loss"], rel=1e-6), (rank, layout, got)
            assert got["grad_diff"] <= GRAD_TOL * max(1.0, scale), (rank, layout, got, scale)


def test_checkpoint_reshards_and_resumes(workdir):
    """Save at TP2+EP2 (distributed optimizer) after one step; load at TP1 (here) and at PP2 (two ranks).

    The loaded weights equal the saved ones exactly; logits agree with the saving layout's within cross-layout
    fp32 noise; and the next step (which needs the restored Adam moments and step count) equals the step the
    uninterrupted run took."""
    from r1_megatron.models import logits
    from r1_megatron.training.checkpoint import latest_checkpoint, load_checkpoint

    torchrun("save", workdir, nproc=2, extra=("tp2ep2",))
    ensure_parallel_state()
    trainer = tf.setup(workdir / "ckpt", distributed_optimizer=True)
    info = load_checkpoint(latest_checkpoint(workdir / "run"), *trainer)
    saved = tf.assemble([torch.load(f) for f in sorted(workdir.glob("saved-params-rank*.pt"))])
    assert tf.max_diff_to_whole(trainer[0], saved) == 0.0
    want, ids = torch.load(workdir / "saved_logits.pt"), torch.load(workdir / "probe.pt")
    assert (logits(unwrap(trainer[0]), ids) - want["after_0"]).abs().max().item() <= LAYOUT_TOL
    tf.step(trainer, info.user_state["next_step"], dp_rank=0, dp_size=1)
    assert (logits(unwrap(trainer[0]), ids) - want["after_1"]).abs().max().item() <= LAYOUT_TOL
    for result in torchrun("resume", workdir, nproc=2, extra=("pp2",)):
        assert result["step"] == 1 and result["weights_diff"] == 0.0, result
        assert result["logits_diff"] <= LAYOUT_TOL and result["next_step_diff"] <= LAYOUT_TOL, result
