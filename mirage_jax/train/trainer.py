"""The training loop and the ``mirage-jax train`` command.

    mirage-jax train --config configs/train_tiny.py --config.train.workdir=/tmp/run \\
        [--config.train.steps=200 --config.optim.learning_rate=1e-4 ...]

The config (an ``ml_collections`` file with ``get_config()``, overridable on the command line
as ``--config.<key>=<value>``, ml_collections' ``config_flags``) has the sections

* ``stage`` (1: control branch, 2: LoRA), ``model`` (:class:`MirageConfig` fields, ``dit`` a
  :class:`WanDiTConfig` dict), ``runtime`` (:class:`WanRuntime`), ``sample``
  (:class:`SampleConfig`), ``optim`` (:class:`OptimConfig`), ``mesh`` (shape, axes, rules
  preset), ``distributed`` (multi-host), ``data`` (the latent clips), ``constants`` (score
  latent and empty-prompt embedding files) and ``train`` (steps, seed, workdir, init_from,
  intervals).

Data: ``data.source = "latent_clips"`` reads the directory ``data.path`` written by
``mirage-jax preprocess`` (:func:`mirage_jax.data.latents.open_latent_clips`), ``"tfds"`` a
registered TFDS dataset ``data.dataset`` in ``data.data_dir``, ``"synthetic"`` generates clips
with :mod:`mirage_jax.train.synthetic` (tests, smoke runs); all go through
:func:`mirage_jax.data.pipeline.make_dataset` with ``sampling="full"`` (whole clips; the step
samples inside jit). Except for synthetic data, ``constants.score_latent`` and
``constants.empty_text`` name ``.npy`` files (no pickles) with the score latent
``[T + P_max, h, w, C]`` and the empty prompt's embedding ``[L, D]``. Every process reads its own
shard (grain ``ShardByJaxProcess``) and the batch is placed on the mesh sharded over the data
axes (``put_on_mesh``).

The loop: restore the latest checkpoint of ``train.workdir`` if there is one (exact resume),
else create the state (sharded) and, for stage 2, load the model weights of ``train.init_from``
(stage 1's run directory); then step until ``train.steps``, with hooks every N steps: logging
(JSONL ``metrics.jsonl`` and TensorBoard event files via tensorboardX when installed, tqdm
progress bar with loss and steps/s), evaluation (``train.eval_every``: the loss on a fixed
batch with a fixed key) and checkpoints (``train.checkpoint_every``, async, keep
``train.keep``; the last step is always saved). Stage 1 loads the pretrained backbone from
``train.init_backbone`` (an orbax DiT directory written by ``mirage-jax convert``).

Multi-host: with ``distributed.initialize = True`` the trainer calls
``jax.distributed.initialize`` first: with ``coordinator_address`` / ``num_processes`` /
``process_id`` when given, else JAX's cluster detection (TPU pods, SLURM, Open MPI).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from mirage_jax import sharding as shd
from mirage_jax.errors import ConfigError, FileFormatError
from mirage_jax.train.checkpoint import TrainCheckpointer, restore_model_weights
from mirage_jax.train.sample import SampleConfig
from mirage_jax.train.step import OptimConfig, TrainState, TrainStep, create_train_state, flow_loss, make_tx

__all__ = ["Hook", "RunConfig", "Trainer", "MetricWriter", "parse_config", "initialize_distributed", "main"]

log = logging.getLogger("mirage_jax.train")

DATA_SOURCES = ("latent_clips", "tfds", "synthetic")


def _plain(d) -> dict:
    d = d.to_dict() if isinstance(d, ml_collections.ConfigDict) else dict(d)
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def _build(cls, section: str, values: dict):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"config.{section}: unknown keys {unknown}; valid: {sorted(names)}")
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"config.{section}: {err}") from err


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """The typed form of a training config (see the module docstring); :func:`parse_config`."""

    stage: int
    model: Any  # MirageConfig
    runtime: Any  # WanRuntime
    sample: SampleConfig
    optim: OptimConfig
    raw: ml_collections.ConfigDict


def parse_config(config: ml_collections.ConfigDict) -> RunConfig:
    """Validates a training config; every problem raises :class:`ConfigError` naming the key."""
    from mirage_jax.models.mirage import MirageConfig
    from mirage_jax.models.wan import WanDiTConfig, WanRuntime

    for section in ("model", "runtime", "sample", "optim", "mesh", "data", "train"):
        if section not in config:
            raise ConfigError(f"config has no section {section!r}")
    stage = config.get("stage")
    if stage not in (1, 2):
        raise ConfigError(f"config.stage must be 1 (control branch) or 2 (LoRA), got {stage!r}")
    model_values = _plain(config.model)
    if "dit" not in model_values:
        raise ConfigError("config.model.dit (the backbone's WanDiTConfig fields) is missing")
    dit = _build(WanDiTConfig, "model.dit", _plain(model_values.pop("dit")))
    model = _build(MirageConfig, "model", {"dit": dit, **model_values})
    runtime = _build(WanRuntime, "runtime", _plain(config.runtime))
    sample = _build(SampleConfig, "sample", _plain(config.sample))
    optim = _build(OptimConfig, "optim", _plain(config.optim))
    if model.control_in_channels != 2 * dit.in_channels:
        raise ConfigError(
            f"config.model.control_in_channels = {model.control_in_channels}: training builds the control input as "
            f"readout || score latent = {2 * dit.in_channels} channels (the hole-mask variant is not trained here)"
        )
    if stage == 2 and model.lora_rank < 1:
        raise ConfigError("config.stage = 2 trains LoRA only; set config.model.lora_rank > 0")
    if stage == 1 and model.lora_rank > 0:
        raise ConfigError("config.stage = 1 trains the control branch; LoRA would stay untrained: set config.model.lora_rank = 0")
    data, train = config.data, config.train
    if data.get("source") not in DATA_SOURCES:
        raise ConfigError(f"config.data.source must be one of {DATA_SOURCES}, got {data.get('source')!r}")
    batch = data.get("batch_size")
    if not isinstance(batch, int) or batch < 1 or batch % optim.grad_accum:
        raise ConfigError(
            f"config.data.batch_size ({batch!r}, global) must be a positive multiple of optim.grad_accum ({optim.grad_accum})"
        )
    if not isinstance(train.get("steps"), int) or train.steps < 1:
        raise ConfigError(f"config.train.steps must be a positive int, got {train.get('steps')!r}")
    if not train.get("workdir"):
        raise ConfigError("config.train.workdir is not set (the run directory: checkpoints, metrics)")
    for key in ("log_every", "checkpoint_every", "keep"):
        if not isinstance(train.get(key), int) or train.get(key) < 1:
            raise ConfigError(f"config.train.{key} must be a positive int, got {train.get(key)!r}")
    if stage == 2 and train.get("init_backbone"):
        raise ConfigError("config.train.init_backbone is for stage 1; stage 2 starts from stage 1's run (train.init_from)")
    if stage == 1 and train.get("init_from"):
        raise ConfigError("config.train.init_from is for stage 2 (stage 1's run directory); stage 1 starts from the backbone")
    if config.mesh.get("rules") not in shd.PRESETS:
        raise ConfigError(f"config.mesh.rules must be one of {sorted(shd.PRESETS)}, got {config.mesh.get('rules')!r}")
    if len(tuple(config.mesh.shape)) != len(tuple(config.mesh.axes)):
        raise ConfigError(f"config.mesh.shape {tuple(config.mesh.shape)} and axes {tuple(config.mesh.axes)} differ in length")
    return RunConfig(stage=stage, model=model, runtime=runtime, sample=sample, optim=optim, raw=config)


def initialize_distributed(cfg) -> None:
    """``jax.distributed.initialize`` from ``config.distributed`` (no-op unless ``initialize``)."""
    if cfg is None or not cfg.get("initialize", False):
        return
    kwargs = {k: cfg.get(k) for k in ("coordinator_address", "num_processes", "process_id") if cfg.get(k) is not None}
    jax.distributed.initialize(**kwargs)


def make_mesh(mesh_cfg) -> jax.sharding.Mesh:
    """The mesh of ``config.mesh``; one ``-1`` in the shape takes the remaining devices."""
    shape = list(mesh_cfg.shape)
    n = jax.device_count()
    if shape.count(-1) > 1:
        raise ConfigError(f"config.mesh.shape {tuple(shape)} has more than one -1")
    if -1 in shape:
        rest = int(np.prod([s for s in shape if s != -1]))
        if n % rest:
            raise ConfigError(f"config.mesh.shape {tuple(shape)} does not divide {n} devices")
        shape[shape.index(-1)] = n // rest
    if int(np.prod(shape)) != n:
        raise ConfigError(f"config.mesh.shape {tuple(shape)} needs {int(np.prod(shape))} devices, there are {n}")
    return shd.make_mesh(shape, tuple(mesh_cfg.axes))


def _load_npy(path: str, what: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise FileFormatError(f"{path}: cannot read the {what} (.npy without pickles): {err}") from err


class MetricWriter:
    """Metrics of process 0 to ``metrics.jsonl`` (one JSON object per line, with ``step``) and,
    when tensorboardX is installed, to TensorBoard event files in the same directory."""

    def __init__(self, directory, tensorboard: bool = True):
        self.directory = Path(directory)
        self.enabled = jax.process_index() == 0
        self._tb = None
        if not self.enabled:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.directory / "metrics.jsonl", "a")
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                log.info("tensorboardX is not installed: metrics go to metrics.jsonl only")
            else:
                self._tb = SummaryWriter(str(self.directory))

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        self._jsonl.write(json.dumps({"step": int(step), **{k: float(v) for k, v in metrics.items()}}) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for k, v in metrics.items():
                self._tb.add_scalar(k, float(v), int(step))

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            if self._tb is not None:
                self._tb.close()


@dataclasses.dataclass
class Hook:
    """``fn(trainer, step, metrics)`` after every ``every``-th step (``metrics``: the host floats of
    that step, or of the logging window for the log hook)."""

    every: int
    fn: Callable[["Trainer", int, dict], None]


class Trainer:
    """One training run (one stage) from a config.

    Args:
      config: the ml_collections config (module docstring).
      model_factory: ``() -> nnx.Module`` with the Mirage call contract (default: MirageModel
        from ``config.model`` / ``config.runtime``, seeded by ``train.seed``).
      trainable: the stage's NNX filter (default: ``mirage_jax.models.mirage.trainable_filter``).
      source: a random-access sequence of latent clip records (default: from ``config.data``).
      constants: ``(score [T + P_max, h, w, C], empty_text [L, D])`` (default: ``config.constants``
        files, or the synthetic stand-ins for ``data.source = "synthetic"``).
      hooks: extra :class:`Hook` s.
    """

    def __init__(self, config: ml_collections.ConfigDict, *, model_factory=None, trainable=None, source=None,
                 constants=None, hooks: list[Hook] | None = None):
        self.run_config = rc = parse_config(config)
        self.config = config
        initialize_distributed(config.get("distributed"))
        self.mesh = make_mesh(config.mesh)
        self.rules = config.mesh.rules
        data_parallel = int(np.prod([self.mesh.shape[a] for a in ("data", "fsdp") if a in self.mesh.shape]))
        micro = config.data.batch_size // rc.optim.grad_accum
        if micro % data_parallel:
            raise ConfigError(
                f"config.data.batch_size / optim.grad_accum = {micro} samples per micro-batch do not divide over the "
                f"{data_parallel} data-parallel devices of the mesh {dict(self.mesh.shape)}"
            )
        t = config.train
        self.workdir = Path(t.workdir).absolute()
        if model_factory is None:
            from mirage_jax.models.mirage import MirageModel

            seed = int(t.seed)
            model_factory = lambda: MirageModel(rc.model, rc.runtime, rngs=nnx.Rngs(seed))  # noqa: E731
        if trainable is None:
            from mirage_jax.models.mirage import trainable_filter

            trainable = trainable_filter(rc.stage)
        self.trainable = trainable
        source, constants = self._data(source, constants)
        self.dataset_source = source
        replicated = NamedSharding(self.mesh, PartitionSpec())
        self.score, self.empty_text = (jax.device_put(np.asarray(x, np.float32), replicated) for x in constants)
        from mirage_jax.data.pipeline import PipelineConfig, make_dataset

        pipe = {k: v for k, v in _plain(config.data).items() if k in {f.name for f in dataclasses.fields(PipelineConfig)}}
        pipe.update(sampling="full", keys=rc.sample.clip_keys)
        self.dataset = make_dataset(pipe, source=source, mesh=self.mesh)
        self.iterator = iter(self.dataset)
        self.checkpointer = TrainCheckpointer(
            self.workdir / "checkpoints", save_every=t.checkpoint_every, keep=t.keep, async_save=t.get("async_checkpoint", True)
        )
        tx = make_tx(rc.optim)
        latest = self.checkpointer.latest_step()
        if latest is not None:
            stored_stage = self.checkpointer.read_meta(latest).get("stage")
            if stored_stage != rc.stage:
                raise ConfigError(f"{self.workdir}: its checkpoints are stage {stored_stage}, config.stage = {rc.stage}")
            self.state = _abstract_train_state(model_factory, tx, trainable, int(t.seed), self.mesh, self.rules)
            self.checkpointer.restore(self.state, self.iterator, latest)
            log.info("resumed %s at step %d", self.workdir, latest)
        else:
            self.state = create_train_state(model_factory, tx, trainable, seed=int(t.seed), mesh=self.mesh, rules=self.rules)
            if t.get("init_backbone"):
                self._load_backbone(t.init_backbone)
            if t.get("init_from"):
                missing = restore_model_weights(self.state.model, Path(t.init_from) / "checkpoints", trainable)
                log.info("initialised from %s (%d new variables)", t.init_from, len(missing))
            elif rc.stage == 2:
                log.warning("stage 2 without train.init_from: the control branch stays at its initialisation")
        self.step_fn = TrainStep(self.state, rc.sample, rc.optim.grad_accum)
        self.writer = MetricWriter(self.workdir, tensorboard=t.get("tensorboard", True))
        self.hooks: list[Hook] = [Hook(t.log_every, Trainer._log_hook)]
        if t.get("eval_every", 0):
            self.hooks.append(Hook(t.eval_every, Trainer._eval_hook))
        self.hooks += list(hooks or [])
        self._window: list[dict] = []
        self._window_start = time.perf_counter()
        self._eval = None
        self._pbar = None

    def _load_backbone(self, directory) -> None:
        """Stage 1: the pretrained DiT (an orbax directory of ``mirage-jax convert``) into ``model.dit``."""
        from mirage_jax.checkpoint import restore_model
        from mirage_jax.models.wan import WanDiT

        rc = self.run_config
        dit = restore_model(directory, lambda: WanDiT(rc.model.dit, rc.runtime), mesh=self.mesh, rules=self.rules)
        nnx.update(self.state.model.dit, nnx.state(dit, nnx.Param))
        log.info("backbone weights from %s", directory)

    # -- data ------------------------------------------------------------------------------------
    def _data(self, source, constants):
        d = self.config.data
        s = self.run_config.sample
        if d.source == "synthetic":
            from mirage_jax.train.synthetic import synthetic_constants, synthetic_latent_clips

            dit = self.run_config.model.dit
            hw = tuple(d.latent_hw)
            if source is None:
                source = synthetic_latent_clips(
                    d.num_clips, d.num_frames, hw, dit.in_channels, s.image_hw, d.text_len, dit.text_dim, seed=d.seed
                )
            if constants is None:
                constants = synthetic_constants(s.num_control, hw, dit.in_channels, d.text_len, dit.text_dim, seed=d.seed)
        elif source is None and d.source == "latent_clips":
            from mirage_jax.data.latents import open_latent_clips

            if not d.get("path"):
                raise ConfigError("config.data.path (the latent_clips directory written by `mirage-jax preprocess`) is not set")
            source = open_latent_clips(d.path, d.split)
        elif source is None:
            from mirage_jax.data.pipeline import make_data_source

            source = make_data_source(d.dataset, d.split, d.get("data_dir"))
        if constants is None:
            c = self.config.get("constants") or {}
            if not c.get("score_latent") or not c.get("empty_text"):
                raise ConfigError(
                    "config.constants.score_latent and config.constants.empty_text (.npy files: the score latent "
                    "[T + P_max, h, w, C] and the empty prompt's embedding [L, D]) are required unless data.source = 'synthetic'"
                )
            constants = (_load_npy(c.score_latent, "score latent"), _load_npy(c.empty_text, "empty-prompt embedding"))
        return source, constants

    # -- loop --------------------------------------------------------------------------------------
    @property
    def step(self) -> int:
        return self.state.step

    def run(self, steps: int | None = None) -> dict[str, float]:
        """Trains until ``steps`` (default ``train.steps``) updates are done; returns the last
        logged metrics. Saves the final step and waits for pending checkpoint writes."""
        total = int(self.config.train.steps if steps is None else steps)
        last: dict[str, float] = {}
        if self.config.train.get("progress", True) and jax.process_index() == 0:
            from tqdm.auto import tqdm

            self._pbar = tqdm(total=total, initial=self.step, desc=f"stage {self.run_config.stage}", dynamic_ncols=True)
        self._window_start = time.perf_counter()
        # The step is counted on the host: reading ``self.step`` (a device scalar) every iteration
        # would wait for each step to finish before dispatching the next.
        step = self.step
        while step < total:
            batch = next(self.iterator)
            metrics = self.step_fn(self.state, batch, self.score, self.empty_text)
            step += 1
            self._window.append(metrics)
            if self._pbar is not None:
                self._pbar.update(1)
            self.checkpointer.save(step, self.state, self.iterator, self._meta)
            for hook in self.hooks:
                if step % hook.every == 0:
                    out = hook.fn(self, step, metrics)
                    if hook.fn is Trainer._log_hook:
                        last = out
        if self._window:
            last = Trainer._log_hook(self, self.step, None)
        if self.checkpointer.latest_step() != self.step:
            self.checkpointer.save(self.step, self.state, self.iterator, self._meta, force=True)
        self.checkpointer.wait()
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        return last

    def close(self) -> None:
        self.checkpointer.close()
        self.writer.close()
        close = getattr(self.iterator, "close", None)
        if close is not None:
            close()

    @functools.cached_property
    def _meta(self) -> dict:
        """The checkpoint meta (stage, config as JSON), serialised once, not at every step."""
        return {"stage": self.run_config.stage, "config": json.loads(self.config.to_json_best_effort())}

    # -- hooks ---------------------------------------------------------------------------------------
    @staticmethod
    def _log_hook(trainer: "Trainer", step: int, _metrics) -> dict[str, float]:
        window = jax.device_get(trainer._window)
        trainer._window = []
        if not window:
            return {}
        now = time.perf_counter()
        out = {k: float(np.mean([m[k] for m in window])) for k in window[0]}
        out["steps_per_s"] = len(window) / max(now - trainer._window_start, 1e-9)
        out["learning_rate"] = float(trainer.run_config.optim.learning_rate_fn()(step - 1))
        trainer._window_start = now
        trainer.writer.write(step, out)
        if trainer._pbar is not None:
            trainer._pbar.set_postfix(loss=f"{out['loss']:.4f}", steps_s=f"{out['steps_per_s']:.2f}")
        return out

    @staticmethod
    def _eval_hook(trainer: "Trainer", step: int, _metrics) -> None:
        if trainer._eval is None:
            # The first batch of a fresh iterator (the training iterator is not advanced) and a
            # fixed key: the same samples, noise and memory reads at every evaluation.
            fresh = iter(trainer.dataset)
            cfg = trainer.run_config.sample
            batch = {k: v for k, v in next(fresh).items() if k in cfg.clip_keys}
            getattr(fresh, "close", lambda: None)()
            graphdef = nnx.graphdef(trainer.state.model)

            @jax.jit
            def eval_loss(state, batch, score, empty):
                model = nnx.merge(graphdef, state)
                return flow_loss(model, batch, score, empty, jax.random.key(1234), cfg, train=False)[0]

            trainer._eval = (eval_loss, batch)
        fn, batch = trainer._eval
        value = float(fn(nnx.state(trainer.state.model), batch, trainer.score, trainer.empty_text))
        trainer.writer.write(step, {"eval_loss": value})


def _abstract_train_state(model_factory, tx, trainable, seed, mesh, rules) -> TrainState:
    """A TrainState of ``jax.ShapeDtypeStruct`` s carrying the target shardings (restore target)."""
    with nnx.use_eager_sharding(False):
        abstract = nnx.eval_shape(lambda: TrainState(model_factory(), tx, trainable, seed))
    graphdef, state = nnx.split(abstract)
    shardings = shd.state_shardings(state, mesh, rules)
    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), state, shardings)
    return nnx.merge(graphdef, state)


def main(argv: list[str] | None = None) -> int:
    """``mirage-jax train --config <file.py>[:arg] [--config.<key>=<value> ...]``."""
    from absl import flags
    from ml_collections import config_flags

    argv = ["mirage-jax train"] + list(argv or [])
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "training config file (get_config)", flag_values=fv, sys_argv=argv)
    try:
        fv(argv)
    except (flags.Error, KeyError, AttributeError, TypeError, ValueError) as err:  # bad flag, key or value
        raise ConfigError(f"mirage-jax train: {err}") from err
    if fv.config is None:
        raise ConfigError("mirage-jax train: --config <file.py> is required")
    logging.basicConfig(level=logging.INFO)
    trainer = Trainer(fv.config)
    try:
        last = trainer.run()
    finally:
        trainer.close()
    if jax.process_index() == 0:
        print(json.dumps({"step": trainer.step, **last}))
    return 0
