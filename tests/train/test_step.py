"""The train step: stage filters on the real Mirage model, learning, sharded == single device."""

import os
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from mirage_jax import sharding as shd
from mirage_jax.errors import ConfigError
from mirage_jax.models.mirage import LoRAParam, MirageConfig, MirageModel, trainable_filter
from mirage_jax.models.wan import WanDiTConfig, WanRuntime
from mirage_jax.train.sample import CLIP_KEYS, SampleConfig
from mirage_jax.train.step import OptimConfig, TrainStep, create_train_state, flow_loss, make_tx
from mirage_jax.train.synthetic import synthetic_constants, synthetic_latent_clips

sys.path.insert(0, os.path.dirname(__file__))
from standin import StandInMirage, standin_filter  # noqa: E402

DIT = WanDiTConfig.tiny()
HW, IMG = (8, 8), (32, 32)
# No reference slots here (references and their padding are covered by test_sample / test_trainer):
# the sample construction then compiles in a few seconds.
CFG = SampleConfig(num_target=3, max_reference=0, max_preceding=1, image_hw=IMG)


def _data(n, seed=0):
    clips = synthetic_latent_clips(n, 6, HW, DIT.in_channels, IMG, 5, DIT.text_dim, seed=seed)
    batch = {k: np.stack([c[k] for c in clips]) for k in CLIP_KEYS}
    score, empty = synthetic_constants(CFG.num_control, HW, DIT.in_channels, 5, DIT.text_dim)
    return batch, score, empty


def _flat(state):
    return {".".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(state)}


def _real_state(stage, lr=1e-3):
    mc = MirageConfig(dit=DIT, lora_rank=4 if stage == 2 else 0, lora_alpha=4.0)
    # Stage 2 runs the training set-up of the 5B config: fp32 master weights, bf16 compute,
    # rematerialised and scanned layers (LoRA factors stacked on the layer axis).
    rt = WanRuntime() if stage == 1 else WanRuntime(dtype="bfloat16", remat="full", scan_layers=True)
    return create_train_state(lambda: MirageModel(mc, rt, rngs=nnx.Rngs(0)),
                              make_tx(OptimConfig(learning_rate=lr)), trainable_filter(stage), seed=0)


@pytest.fixture(scope="module")
def stage1():
    ts = _real_state(1)
    return ts, TrainStep(ts, CFG)


@pytest.mark.parametrize("stage", [1, 2])
def test_stage_filter_trains_exactly_its_parameters(stage, stage1):
    ts, step = stage1 if stage == 1 else (lambda t: (t, TrainStep(t, CFG)))(_real_state(2))
    batch, score, empty = _data(2)
    before = _flat(nnx.state(ts.model))
    selected = set(_flat(nnx.state(ts.model, trainable_filter(stage))))
    assert selected and all(k.startswith("control.") for k in selected) if stage == 1 else all(
        isinstance(v, LoRAParam) for _, v in nnx.to_flat_state(nnx.state(ts.model, trainable_filter(2))))
    # The optimizer holds moments for the trainable parameters only.
    n_sel = sum(before[k].size for k in selected)
    mu = [x for p, x in nnx.to_flat_state(nnx.state(ts.optimizer)) if "mu" in map(str, p)]
    assert sum(np.size(x.get_value()) for x in mu) == n_sel
    metrics = step(ts, batch, score, empty)
    assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0
    after = _flat(nnx.state(ts.model))
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    assert changed and changed <= selected
    frozen = set(before) - selected
    assert all(np.array_equal(before[k], after[k]) for k in frozen)
    # The zero-initialised output of each stage gets the gradient first.
    key = "after_proj" if stage == 1 else "lora_b"
    assert any(key in k for k in changed)


def test_loss_decreases_on_one_batch(stage1):
    """Overfit one batch: the loss at a fixed key (same samples, noise, memory reads) drops."""
    ts, step = stage1
    batch, score, empty = _data(2, seed=1)
    graphdef = nnx.graphdef(ts.model)

    @jax.jit
    def loss_at(state):
        return flow_loss(nnx.merge(graphdef, state), batch, score, empty, jax.random.key(7), CFG, train=False)[0]

    first = float(loss_at(nnx.state(ts.model)))
    for _ in range(40):
        step(ts, batch, score, empty)
    last = float(loss_at(nnx.state(ts.model)))
    assert last < 0.8 * first, (first, last)


def test_sharded_step_equals_single_device():
    """(2, 4) mesh (batch over data x fsdp, parameters over fsdp), 2 steps with 2 micro-batches."""
    batch, score, empty = _data(8, seed=2)
    fac = lambda: StandInMirage(DIT.in_channels, DIT.text_dim, width=16, rngs=nnx.Rngs(0))  # noqa: E731
    tx = make_tx(OptimConfig(learning_rate=1e-2))
    single = create_train_state(fac, tx, standin_filter(1), seed=3)
    mesh = shd.make_mesh((2, 4), ("data", "fsdp"))
    sharded = create_train_state(fac, tx, standin_filter(1), seed=3, mesh=mesh, rules="fsdp")
    w = sharded.model.control.w_in.get_value()
    assert w.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp") and len(w.addressable_shards) == 8
    from mirage_jax.data.pipeline import put_on_mesh

    placed = put_on_mesh(batch, mesh)
    s1, s8 = TrainStep(single, CFG, grad_accum=2), TrainStep(sharded, CFG, grad_accum=2)
    for _ in range(2):
        m1 = s1(single, batch, score, empty)
        m8 = s8(sharded, placed, score, empty)
        np.testing.assert_allclose(float(m8["loss"]), float(m1["loss"]), rtol=1e-5)
    assert sharded.model.control.w_in.get_value().sharding.spec == w.sharding.spec  # kept
    a, b = _flat(nnx.state(single)), _flat(nnx.state(sharded))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert int(sharded.optimizer.step[...]) == 2


def test_optim_config_errors():
    with pytest.raises(ConfigError, match="schedule"):
        OptimConfig(schedule="linear")
    with pytest.raises(ConfigError, match="warmup_steps"):
        OptimConfig(schedule="warmup_constant")
    with pytest.raises(ConfigError, match="grad_accum"):
        OptimConfig(grad_accum=0)
    with pytest.raises(ConfigError, match="selects no parameter"):
        create_train_state(lambda: StandInMirage(rngs=nnx.Rngs(0)), make_tx(OptimConfig()), standin_filter(2), seed=0)
    lr = OptimConfig(learning_rate=1.0, schedule="warmup_constant", warmup_steps=4).learning_rate_fn()
    np.testing.assert_allclose([float(lr(s)) for s in (0, 2, 4, 10)], [0.0, 0.5, 1.0, 1.0])
