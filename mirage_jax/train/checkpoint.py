"""Training checkpoints: one orbax ``CheckpointManager`` per run directory.

Every checkpoint (step ``n`` = optimizer updates done) holds four items:

* ``model``: the model's variables (nested dict, string keys = NNX path components), sharded
  arrays written by every process (OCDBT);
* ``optimizer``: the ``nnx.Optimizer`` state (step counter, AdamW moments of the trainable
  variables only) and the run's base PRNG key (``rng``);
* ``data``: the grain iterator state, one JSON file per process (grain's orbax handler,
  ``grain.checkpoint.CheckpointSave``), snapshotted when the save is requested;
* ``meta``: JSON with the stage, the step and the run's config (``config.to_json_best_effort()``, parsed).

Saves are asynchronous (the arrays are copied off device, then written in a background thread
while training continues), every ``save_every`` steps, keeping the last ``keep``; a run restarted
on the same directory resumes from the latest step with the same parameters, optimizer moments,
PRNG key and data position, hence bit-identical results (tests/train/test_trainer.py).

Restores read every array directly into its target sharding (abstract target built with
``nnx.eval_shape``; no full copy on one device). :func:`restore_model_weights` reads only the
``model`` item of another run (stage 2 starts from stage 1's final weights): the new model may
have variables the old one lacks only where they are the new stage's trainable ones (LoRA) or
not parameters; any other difference raises :class:`CheckpointError`.
"""

from __future__ import annotations

import json
from pathlib import Path
import grain
import jax
import orbax.checkpoint as ocp
from flax import nnx

from mirage_jax.checkpoint import _nest, _unnest
from mirage_jax.convert.place import flat_variables as _flat_vars
from mirage_jax.errors import FileFormatError
from mirage_jax.train.step import RngKey

__all__ = ["CheckpointError", "TrainCheckpointer", "restore_model_weights", "state_tree", "abstract_tree"]


class CheckpointError(FileFormatError):
    """A training checkpoint that is missing, malformed or does not fit the run."""


def state_tree(state: nnx.State) -> dict:
    """An nnx State -> nested dict of arrays with string keys (orbax-friendly)."""
    return _nest({k: v.get_value() for k, v in _flat_vars(state).items()})


def abstract_tree(state: nnx.State) -> dict:
    """Like :func:`state_tree` but ``jax.ShapeDtypeStruct`` leaves carrying each array's sharding."""
    def abstract(v):
        x = v.get_value()
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))

    return _nest({k: abstract(v) for k, v in _flat_vars(state).items()})


def _fill(state: nnx.State, tree: dict) -> nnx.State:
    """Writes the arrays of a nested dict back into ``state``'s variables (same paths)."""
    flat = _unnest(tree)
    for k, var in _flat_vars(state).items():
        var.set_value(flat[k])
    return state


class _IteratorSnapshot:
    """The iterator state at save time (an async save must not see later positions)."""

    def __init__(self, iterator):
        self._state = json.dumps(iterator.get_state(), indent=4).encode("utf-8")

    def get_state(self) -> bytes:
        return self._state


class TrainCheckpointer:
    """The run directory's checkpoints (see the module docstring).

    Args:
      directory: the run's checkpoint directory (created).
      save_every: save when ``step % save_every == 0`` (``force=True`` saves any step).
      keep: number of checkpoints kept (oldest deleted).
      async_save: write in a background thread.
    """

    def __init__(self, directory, save_every: int = 1000, keep: int = 3, async_save: bool = True):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=int(save_every),
            max_to_keep=int(keep),
            enable_async_checkpointing=bool(async_save),
            create=True,
        )
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_handlers={
                "model": ocp.StandardCheckpointHandler(),
                "optimizer": ocp.StandardCheckpointHandler(),
                "data": grain.checkpoint.CheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler(),
            },
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, ts, iterator=None, meta: dict | None = None, *, force: bool = False) -> bool:
        """Requests a save of ``ts`` (a TrainState) at ``step``; returns whether one started."""
        if not force and not self.manager.should_save(step):
            return False
        items = {
            "model": ocp.args.StandardSave(state_tree(nnx.state(ts.model))),
            "optimizer": ocp.args.StandardSave(
                {"optimizer": state_tree(nnx.state(ts.optimizer)), "rng": state_tree(nnx.state(ts, RngKey))}
            ),
            "meta": ocp.args.JsonSave({"step": int(step), **(meta or {})}),
        }
        if iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(_IteratorSnapshot(iterator))
        return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    def read_meta(self, step: int | None = None) -> dict:
        step = self._step(step)
        return dict(self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])

    def restore(self, ts, iterator=None, step: int | None = None) -> dict:
        """Restores ``ts`` (a TrainState, possibly abstract: only shapes / shardings are used)
        and ``iterator`` in place from ``step`` (default: the latest); returns the meta dict."""
        step = self._step(step)
        opt_target = {"optimizer": abstract_tree(nnx.state(ts.optimizer)), "rng": abstract_tree(nnx.state(ts, RngKey))}
        items = {
            "model": ocp.args.StandardRestore(abstract_tree(nnx.state(ts.model))),
            "optimizer": ocp.args.StandardRestore(opt_target),
            "meta": ocp.args.JsonRestore(),
        }
        if iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(iterator)
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(**items))
        except (ValueError, KeyError, FileNotFoundError) as err:
            raise CheckpointError(f"{self.directory} step {step}: cannot restore the training state: {err}") from err
        nnx.update(ts.model, _fill(nnx.state(ts.model), out["model"]))
        nnx.update(ts.optimizer, _fill(nnx.state(ts.optimizer), out["optimizer"]["optimizer"]))
        nnx.update(ts, _fill(nnx.state(ts, RngKey), out["optimizer"]["rng"]))
        return dict(out["meta"])

    def _step(self, step):
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"{self.directory}: no checkpoint to restore")
        return step

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def restore_model_weights(model: nnx.Module, directory, trainable, step: int | None = None) -> list[str]:
    """Loads the ``model`` item of another run's checkpoint into ``model`` (in place, into the
    model's current shardings); returns the paths the checkpoint did not have.

    ``trainable`` is the new stage's filter: a variable of ``model`` missing from the checkpoint
    is allowed only when the filter selects it or it is not an ``nnx.Param`` (e.g. LoRA factors
    and their index in stage 2); a checkpoint path the model lacks, a shape mismatch or any
    other missing parameter raises :class:`CheckpointError`. Arrays are read in the model's
    dtypes (orbax casts a stored array of another dtype; no dtype check).
    """
    directory = Path(directory).absolute()
    with ocp.CheckpointManager(directory, item_handlers={"model": ocp.StandardCheckpointHandler()}) as mngr:
        step = mngr.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"{directory}: no checkpoint to initialise the model from")
        stored_meta = mngr.item_metadata(step)["model"]
        stored = _unnest(dict(stored_meta.tree if hasattr(stored_meta, "tree") else stored_meta))
        state = nnx.state(model)
        current = _flat_vars(state)
        selected = set(_flat_vars(model, trainable))
        extra = sorted(set(stored) - set(current))
        if extra:
            raise CheckpointError(f"{directory} step {step}: the model has no variables {extra[:5]} ({len(extra)} in all)")
        missing = sorted(set(current) - set(stored))
        bad = [k for k in missing if k not in selected and isinstance(current[k], nnx.Param)]
        if bad:
            raise CheckpointError(
                f"{directory} step {step}: parameters {bad[:5]} ({len(bad)} in all) are not in the checkpoint and "
                "are not trained in this stage"
            )
        for k in stored:
            s, v = stored[k], current[k].get_value()
            if tuple(s.shape) != tuple(v.shape):
                raise CheckpointError(f"{directory} step {step} (key {k!r}): shape {tuple(s.shape)}, model has {v.shape}")
        target = _nest({
            k: jax.ShapeDtypeStruct(current[k].get_value().shape, current[k].get_value().dtype,
                                    sharding=getattr(current[k].get_value(), "sharding", None))
            for k in stored
        })
        out = mngr.restore(step, args=ocp.args.Composite(model=ocp.args.StandardRestore(target)))["model"]
    for k, value in _unnest(out).items():
        current[k].set_value(value)
    nnx.update(model, state)
    return missing
