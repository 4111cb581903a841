"""The trainer: exact resume, stage 2 from stage 1, metrics files, config errors, the CLI."""

import json
import os
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from mirage_jax import cli
from mirage_jax.config import load_config
from mirage_jax.errors import ConfigError
from mirage_jax.models.wan import WanDiTConfig
from mirage_jax.train.checkpoint import CheckpointError, restore_model_weights
from mirage_jax.train.trainer import Trainer, parse_config

sys.path.insert(0, os.path.dirname(__file__))
from standin import StandInMirage, standin_filter  # noqa: E402

DIT = WanDiTConfig.tiny()
CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "train_tiny.py")


def _factory(lora_rank=0):
    return lambda: StandInMirage(DIT.in_channels, DIT.text_dim, lora_rank=lora_rank, rngs=nnx.Rngs(0))


def _config(workdir, steps, **train):
    c = load_config(CONFIG)
    c.train.update(dict(workdir=str(workdir), steps=steps, checkpoint_every=2, log_every=2, keep=2, progress=False, **train))
    c.sample.max_reference = 1
    return c


def _trainer(workdir, steps, **train):
    return Trainer(_config(workdir, steps, **train), model_factory=_factory(), trainable=standin_filter(1))


def _leaves(ts):
    return {".".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(ts))}


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted 5-step run (checkpoints at 2, 4 and the final 5)."""
    wd = tmp_path_factory.mktemp("straight")
    t = _trainer(wd, 5, eval_every=4)  # evaluation must not disturb training (resumed runs have none)
    last = t.run()
    t.close()
    return wd, t, last


def test_exact_resume(straight, tmp_path):
    wd, full, last = straight
    assert full.step == 5 and np.isfinite(last["loss"]) and last["steps_per_s"] > 0
    assert full.checkpointer.all_steps() == [4, 5]  # keep=2
    # "Killed" after 3 steps (last checkpoint at step 2), restarted, run to 5.
    a = _trainer(tmp_path, 3)
    a.run()
    a.close()
    b = _trainer(tmp_path, 5)
    assert b.step == 3  # the final step of the stopped run was saved
    b.run()
    b.close()
    want, got = _leaves(full.state), _leaves(b.state)
    assert want.keys() == got.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    # The same from an earlier checkpoint (step 2): the data iterator is restored too.
    c = _trainer(tmp_path / "c", 2)
    c.run()
    c.close()
    c = _trainer(tmp_path / "c", 5)
    c.run()
    c.close()
    for k in want:
        np.testing.assert_array_equal(_leaves(c.state)[k], want[k], err_msg=k)
    meta = c.checkpointer.read_meta()
    assert meta["stage"] == 1 and meta["step"] == 5 and meta["config"]["train"]["steps"] == 5


def test_metrics_files(straight):
    wd, _, _ = straight
    rows = [json.loads(line) for line in open(wd / "metrics.jsonl")]
    train = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train] == [2, 4, 5]
    assert {"loss", "grad_norm", "steps_per_s", "readout_hit", "learning_rate"} <= set(train[0])
    evals = [r for r in rows if "eval_loss" in r]
    assert [r["step"] for r in evals] == [4] and np.isfinite(evals[0]["eval_loss"])
    pytest.importorskip("tensorboardX")
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(wd))


def test_stage2_starts_from_stage1_weights(straight):
    wd, full, _ = straight
    model = _factory(lora_rank=2)()
    missing = restore_model_weights(model, wd / "checkpoints", standin_filter(2))
    assert sorted(missing) == ["dit.lora_a", "dit.lora_b"]
    trained = dict(nnx.to_flat_state(nnx.state(full.state.model)))
    for path, var in nnx.to_flat_state(nnx.state(model)):
        if path in trained:
            np.testing.assert_array_equal(np.asarray(var.get_value()), np.asarray(trained[path].get_value()))
    # Missing parameters that the new stage does not train are an error.
    with pytest.raises(CheckpointError, match="not in the checkpoint"):
        restore_model_weights(_factory(lora_rank=2)(), wd / "checkpoints", standin_filter(1))
    with pytest.raises(ConfigError, match="its checkpoints are stage 1"):
        c = _config(wd, 6)
        c.stage, c.model.lora_rank = 2, 2
        Trainer(c, model_factory=_factory(2), trainable=standin_filter(2))


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("stage", 3, "stage must be 1"),
        ("model.lora_rank", 4, "LoRA would stay untrained"),
        ("model.control_layers", (0, 7), "control"),
        ("model.control_in_channels", 7, "control_in_channels"),
        ("model.control_in_channels", 5, "readout \\|\\| score"),
        ("optim.grad_accum", 3, "multiple of optim.grad_accum"),
        ("optim.schedule", "cosine", "schedule"),
        ("sample.text_drop", 2.0, "text_drop"),
        ("mesh.rules", "zero3", "mesh.rules"),
        ("data.source", "s3", "data.source"),
        ("train.init_from", "/x", "stage 2"),
        ("train.steps", 0, "train.steps"),
    ],
)
def test_bad_configs_raise_config_error(key, value, match, tmp_path):
    c = _config(tmp_path, 2)
    section, _, name = key.rpartition(".")
    with c.unlocked():
        (c[section] if section else c)[name] = value
    with pytest.raises(ConfigError, match=match):
        parse_config(c)


def test_bad_runtime_configs(tmp_path):
    c = _config(tmp_path, 2)
    c.sample.unknown = 1
    with pytest.raises(ConfigError, match="unknown keys"):
        parse_config(c)
    c = _config(tmp_path, 2)
    c.data.batch_size = 4  # 4 samples over 8 data-parallel devices
    with pytest.raises(ConfigError, match="data-parallel devices"):
        Trainer(c, model_factory=_factory(), trainable=standin_filter(1))
    c = _config(tmp_path, 2)
    c.data.source = "latent_clips"
    with pytest.raises(ConfigError, match="data.path"):
        Trainer(c, model_factory=_factory(), trainable=standin_filter(1))


def test_cli_train_reports_config_errors(tmp_path):
    base = ["train", "--config", CONFIG, f"--config.train.workdir={tmp_path}"]
    with pytest.raises(ConfigError, match="stage must be 1"):
        cli.main(base + ["--config.stage=3"])
    with pytest.raises(ConfigError, match="nosuchkey"):
        cli.main(base + ["--config.train.nosuchkey=1"])
    with pytest.raises(ConfigError, match="--config"):
        cli.main(["train"])
    assert jax.device_count() == 8
