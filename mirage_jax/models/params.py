"""The one way to create a model parameter: :func:`param`, an ``nnx.Param`` with logical axis names.

Every model of the project (Wan DiT, Wan VAE, the Mirage control branch, LoRA, the text encoder)
creates its parameters with :func:`param`::

    from mirage_jax.models.params import param

    self.kernel = param(init, ("embed", "mlp"), key=key, shape=(d, f), dtype=param_dtype)
    self.scale = param(jnp.ones((d,)), ("norm",))          # or from a ready value

The names are the logical axes of :mod:`mirage_jax.sharding` (``embed``, ``heads``, ``mlp``,
``norm``, ``conv_in`` ... or None for a dimension that is never sharded); they are *metadata
only*: creating a parameter never shards it, so a module builds the same way eagerly (on the
default device), under ``nnx.eval_shape`` (no memory) and inside ``jax.set_mesh`` (the arrays
are not placed by the mesh; flax's own eager sharding, which needs mesh axis names rather than
logical names, is switched off per parameter). Placement in a mesh happens in one place:
:func:`mirage_jax.sharding.create_sharded` for random initialisation and
:func:`mirage_jax.convert.place.place` for checkpoints, both from these names.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

__all__ = ["param"]


def param(
    value: jax.Array | np.ndarray | Callable[..., jax.Array],
    names: Sequence[str | None],
    *,
    key: jax.Array | None = None,
    shape: Sequence[int] | None = None,
    dtype: Any = jnp.float32,
    kind: type[nnx.Param] = nnx.Param,
) -> nnx.Param:
    """An ``nnx.Param`` carrying the logical axis ``names`` (one per dimension).

    Args:
      value: the initial array, or an initializer ``init(key, shape, dtype)`` (any
        ``nnx.initializers`` / ``jax.nn.initializers`` function), called with ``key``,
        ``shape`` and ``dtype``.
      names: logical axis name (or None) per dimension; ``len(names)`` must equal the rank.
      key, shape, dtype: only with an initializer (``dtype`` default float32).
      kind: the ``nnx.Param`` subclass to create (e.g. a LoRA parameter type that an
        optimizer filter selects).

    Raises:
      ValueError: the number of names differs from the rank, or an initializer comes without
        ``key`` / ``shape`` (or an array with them).
    """
    names = tuple(names)
    if callable(value) and not hasattr(value, "shape"):
        if key is None or shape is None:
            raise ValueError("param: an initializer needs key= and shape=")
        value = value(key, tuple(int(s) for s in shape), dtype)
    elif key is not None or shape is not None:
        raise ValueError("param: key= and shape= are for initializers; got an array")
    if len(names) != np.ndim(value):
        raise ValueError(f"param: {len(names)} axis names {names} for a parameter of shape {np.shape(value)}")
    return kind(value, out_sharding=names, eager_sharding=False)
