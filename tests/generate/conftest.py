"""Shared test helpers of tests/generate."""

import jax
import numpy as np
import pytest
from flax import nnx

_SEEN: list = []  # the control inputs the model got (module level: a module's attributes are static)


class _Recording(nnx.Module):
    """The model, sending every control input it gets to the host (``_SEEN``)."""

    def __init__(self, model):
        self.model, self.config = model, model.config

    def __call__(self, latents, timestep, text, control, **kwargs):
        jax.debug.callback(lambda c: _SEEN.append(np.asarray(c)), control)
        return self.model(latents, timestep, text, control, **kwargs)


@pytest.fixture
def recording():
    """``(wrap, seen)``: ``wrap(model)`` records every control input of its calls into ``seen``
    (cleared for each test)."""
    _SEEN.clear()
    return _Recording, _SEEN
