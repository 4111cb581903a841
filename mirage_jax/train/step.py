"""The training state, the optimizer, the flow-matching loss and the jitted, sharded step.

    ts = create_train_state(lambda: MirageModel(cfg, runtime, rngs=nnx.Rngs(0)), make_tx(optim),
                            trainable_filter(stage), seed=0, mesh=mesh, rules="fsdp")
    step = TrainStep(ts, sample_cfg, grad_accum=4)          # jax.jit, donates the state
    metrics = step(ts, batch, score, empty_text)             # updates ``ts`` in place

Design:

* :class:`TrainState` (an NNX module) holds the model, its ``nnx.Optimizer(model, tx,
  wrt=filter)`` (only the stage's trainable variables get optimizer state and updates;
  the others are bit-identical after a step) and the run's base PRNG key. The key of step
  ``n`` is ``fold_in(base, n)``, so a restored state draws exactly the same numbers.
* Precision: master weights are float32 (``WanRuntime(param_dtype=float32)``); compute runs in
  the runtime's dtype (bfloat16 by default in the training configs); the loss and the
  gradient accumulation are float32. The reference keeps its trainable weights in bf16 with no
  fp32 copy (spec 10.8), which loses small AdamW updates at lr 1e-5; we do not.
* Gradient accumulation is a ``lax.scan`` over micro-batches inside the one jitted step, not
  ``optax.MultiSteps``: one call = one optimizer update (the step counter, the schedule, the
  checkpoint interval and the data iterator all count updates), the global batch is one
  sharded array, the loop costs no host round trips, and only one gradient buffer is live
  (MultiSteps keeps its accumulator in the optimizer state and needs a call per micro-batch).
  Micro-batch ``i`` holds samples ``i, i + A, i + 2A, ...`` of the global batch (a reshape
  that keeps each device's rows local when the batch is sharded).
* Sharding: the state is created directly in its shardings (:func:`mirage_jax.sharding.create_sharded`,
  logical axis names -> mesh axes); the step keeps them (``out_shardings``) and donates the
  input state; the batch arrives sharded over the data axes (``put_on_mesh``).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mirage_jax import sharding as shd
from mirage_jax.diffusion import flow
from mirage_jax.errors import ConfigError, InputError
from mirage_jax.train.sample import SampleConfig, build_inputs, check_clip_batch

__all__ = ["OptimConfig", "RngKey", "TrainState", "TrainStep", "create_train_state", "flow_loss", "make_tx"]

SCHEDULES = ("constant", "warmup_constant", "warmup_cosine")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW with global-norm clipping (spec 10.5 defaults: lr 1e-5, betas 0.9 / 0.999, weight
    decay 0.01, clip 1.0, constant schedule).

    schedule: "constant", "warmup_constant" (linear warm-up over ``warmup_steps``, then
      constant) or "warmup_cosine" (warm-up, then cosine decay to 0 at ``decay_steps``).
    grad_accum: micro-batches per update (the global batch must divide by it).
    """

    learning_rate: float = 1e-5
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.01
    clip_norm: float = 1.0
    schedule: str = "constant"
    warmup_steps: int = 0
    decay_steps: int = 0
    grad_accum: int = 1

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"optim.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not float(self.learning_rate) > 0:
            raise ConfigError(f"optim.learning_rate must be > 0, got {self.learning_rate!r}")
        if not (0 <= self.b1 < 1 and 0 <= self.b2 < 1):
            raise ConfigError(f"optim.b1 / b2 must be in [0, 1), got {self.b1}, {self.b2}")
        if self.weight_decay < 0 or self.clip_norm <= 0:
            raise ConfigError(f"optim.weight_decay must be >= 0 and clip_norm > 0, got {self.weight_decay}, {self.clip_norm}")
        if not isinstance(self.grad_accum, int) or self.grad_accum < 1:
            raise ConfigError(f"optim.grad_accum must be an int >= 1, got {self.grad_accum!r}")
        if self.schedule != "constant" and self.warmup_steps < 1:
            raise ConfigError(f"optim.schedule={self.schedule!r} needs warmup_steps >= 1, got {self.warmup_steps}")
        if self.schedule == "warmup_cosine" and self.decay_steps <= self.warmup_steps:
            raise ConfigError(
                f"optim.decay_steps ({self.decay_steps}) must exceed warmup_steps ({self.warmup_steps}) for warmup_cosine"
            )

    def learning_rate_fn(self) -> optax.Schedule:
        lr = float(self.learning_rate)
        if self.schedule == "constant":
            return optax.constant_schedule(lr)
        if self.schedule == "warmup_constant":
            return optax.join_schedules(
                [optax.linear_schedule(0.0, lr, self.warmup_steps), optax.constant_schedule(lr)], [self.warmup_steps]
            )
        return optax.warmup_cosine_decay_schedule(0.0, lr, self.warmup_steps, self.decay_steps, 0.0)


@functools.lru_cache(maxsize=None)
def make_tx(cfg: OptimConfig) -> optax.GradientTransformation:
    """``clip_by_global_norm(clip) -> adamw(schedule, b1, b2, eps, weight_decay)``.

    Cached per config: the transformation is static data of the optimizer's graph, so equal
    configs must give the same object for a second trainer to reuse the compiled step."""
    return optax.chain(
        optax.clip_by_global_norm(cfg.clip_norm),
        optax.adamw(cfg.learning_rate_fn(), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay),
    )


class RngKey(nnx.Variable):
    """The run's base PRNG key data (uint32); never trained."""


class TrainState(nnx.Module):
    """Model + optimizer (``wrt`` = the stage's trainable filter) + base PRNG key."""

    def __init__(self, model: nnx.Module, tx: optax.GradientTransformation, wrt, seed: int):
        self.model = model
        self.optimizer = nnx.Optimizer(model, tx, wrt=wrt)
        self.rng = RngKey(jax.random.key_data(jax.random.key(seed)))

    @property
    def step(self) -> int:
        return int(self.optimizer.step[...])


def create_train_state(
    model_factory: Callable[[], nnx.Module],
    tx: optax.GradientTransformation,
    wrt,
    *,
    seed: int = 0,
    mesh=None,
    rules: str | shd.Rules = "fsdp",
) -> TrainState:
    """A :class:`TrainState` whose parameters and optimizer state are created sharded on ``mesh``
    (no full copy on one device); ``mesh=None`` builds it eagerly on the default device.

    Raises ConfigError when ``wrt`` selects no parameter of the model.
    """
    factory = lambda: TrainState(model_factory(), tx, wrt, seed)  # noqa: E731
    if mesh is None:
        ts = factory()
    else:
        ts = shd.create_sharded(factory, mesh, rules)
    n = sum(x.size for x in jax.tree.leaves(nnx.state(ts.model, wrt)))
    if n == 0:
        raise ConfigError(f"the trainable filter {wrt!r} selects no parameter of {type(ts.model).__name__}")
    return ts


def flow_loss(model, batch, score, empty_text, key, cfg: SampleConfig, *, train: bool = True):
    """Rectified-flow loss of spec 10.5 on a batch of latent clips (inside jit).

    One ``u ~ U(0, 1)`` per sample and target frame, ``sigma = shift(u)``; target frame 0 gets
    sigma 0 (clean, timestep 0), references and preceding frames timestep 0;
    ``x = (1 - sigma) x0 + sigma eps``; the loss is the float32 mean squared error between the
    predicted velocity and ``eps - x0`` over target frames 1..T-1 of every sample.

    Returns ``(loss, aux)`` with aux a dict of per-batch float32 metrics.
    """
    k_sample, k_sigma, k_eps, k_drop = jax.random.split(key, 4)
    inp = build_inputs(k_sample, batch, score, empty_text, cfg)
    B = inp.latents.shape[0]
    R, T, P = cfg.max_reference, cfg.num_target, cfg.max_preceding
    sigma = flow.sample_sigmas(k_sigma, (B, T), cfg.shift).at[:, 0].set(0.0)
    x0 = inp.latents[:, R : R + T]
    eps = jax.random.normal(k_eps, x0.shape, jnp.float32)
    latents = inp.latents.at[:, R : R + T].set(flow.add_noise(x0, eps, sigma))
    zeros = lambda n: jnp.zeros((B, n), jnp.float32)  # noqa: E731
    timestep = jnp.concatenate([zeros(R), flow.sigma_to_timestep(sigma), zeros(P)], axis=1)
    v = model(
        latents, timestep, inp.text, inp.control, num_reference=R, frame_mask=inp.frame_mask,
        train=train, dropout_key=k_drop,
    )
    err = jnp.square(v[:, R + 1 : R + T].astype(jnp.float32) - flow.velocity_target(x0, eps)[:, 1:])
    loss = jnp.mean(err)
    aux = {
        "loss": loss,
        "readout_hit": jnp.mean(inp.readout_hit),
        "num_reference": jnp.mean(inp.num_reference.astype(jnp.float32)),
        "num_preceding": jnp.mean(inp.num_preceding.astype(jnp.float32)),
        "sigma": jnp.mean(sigma[:, 1:]),
    }
    return loss, aux


def _microbatches(batch, accum: int):
    def split(x):
        if x.shape[0] % accum:
            raise InputError(f"global batch {x.shape[0]} is not divisible by grad_accum={accum}")
        x = x.reshape((x.shape[0] // accum, accum) + x.shape[1:])
        return jnp.swapaxes(x, 0, 1)

    return jax.tree.map(split, batch)


def _step_impl(graphdef, state, batch, score, empty_text, cfg: SampleConfig, accum: int):
    ts: TrainState = nnx.merge(graphdef, state)
    wrt = ts.optimizer.wrt
    key = jax.random.fold_in(jax.random.wrap_key_data(ts.rng[...]), ts.optimizer.step[...])
    gdef, model_state = nnx.split(ts.model)
    params = nnx.state(ts.model, wrt)

    def grad_fn(micro, k):
        # The model is rebuilt at the current trace level (inside the accumulation scan) and
        # differentiated with NNX's own transform, which composes with the model's nnx.scan /
        # nnx.remat over layers; only the ``wrt`` variables get gradients.
        def loss_of(model):
            return flow_loss(model, micro, score, empty_text, k, cfg)

        fresh = jax.tree.map(lambda x: x, model_state)  # new Variable objects at this trace level
        return nnx.value_and_grad(loss_of, argnums=nnx.DiffState(0, wrt), has_aux=True)(nnx.merge(gdef, fresh))

    if accum == 1:
        (_, aux), grads = grad_fn(batch, key)
    else:
        def body(acc, xs):
            micro, i = xs
            (_, a), g = grad_fn(micro, jax.random.fold_in(key, i))
            return jax.tree.map(lambda s, x: s + x.astype(jnp.float32), acc, g), a

        zero = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
        grads, auxs = jax.lax.scan(body, zero, (_microbatches(batch, accum), jnp.arange(accum)))
        grads = jax.tree.map(lambda g, p: (g / accum).astype(p.dtype), grads, params)
        aux = jax.tree.map(jnp.mean, auxs)
    aux["grad_norm"] = optax.tree.norm(grads)
    ts.optimizer.update(ts.model, grads)
    return nnx.state(ts), aux


_STEP_JITS: dict = {}


def _jitted_step(state_sh):
    """One ``jax.jit`` object per state layout (treedef + shardings), shared by every TrainStep, so a
    second trainer with the same model and mesh (e.g. a resumed run) reuses the compilation."""
    leaves, treedef = jax.tree.flatten(state_sh)
    key = (treedef, tuple(leaves))
    if key not in _STEP_JITS:
        _STEP_JITS[key] = jax.jit(
            _step_impl,
            static_argnums=(0, 5, 6),
            donate_argnums=(1,),
            in_shardings=(state_sh, None, None, None),
            out_shardings=(state_sh, None),
        )
    return _STEP_JITS[key]


class TrainStep:
    """The jitted training step for one :class:`TrainState` layout (graph, shardings, shapes).

    ``step(ts, batch, score, empty_text)`` updates ``ts`` in place (its old buffers are donated)
    and returns the step's metrics (float32 scalars on device: loss, grad_norm, readout_hit,
    num_reference, num_preceding, sigma).

    Args:
      ts: the state (its current shardings are kept).
      cfg: the sample construction (static).
      grad_accum: micro-batches per update.
    """

    def __init__(self, ts: TrainState, cfg: SampleConfig, grad_accum: int = 1):
        self.graphdef, state = nnx.split(ts)
        self.cfg = cfg
        self.grad_accum = int(grad_accum)
        self._jit = _jitted_step(jax.tree.map(lambda x: x.sharding, state))

    def lower(self, ts: TrainState, batch, score, empty_text):
        """The lowered step (``.compile()`` for compile time, ``.cost_analysis()``)."""
        _, state = nnx.split(ts)
        return self._jit.lower(self.graphdef, state, batch, score, empty_text, self.cfg, self.grad_accum)

    def __call__(self, ts: TrainState, batch, score, empty_text) -> dict[str, Any]:
        batch = {k: batch[k] for k in self.cfg.clip_keys if k in batch}
        check_clip_batch(batch, self.cfg, score, empty_text)
        _, state = nnx.split(ts)
        new_state, metrics = self._jit(
            self.graphdef, state, batch, score, empty_text, self.cfg, self.grad_accum
        )
        nnx.update(ts, new_state)
        return metrics
