"""RolloutConfig(read_memory=False): the model gets the control input with its readout half all
zero and its score half unchanged, while the memory is still read (random tiny models, one
chunk). That it changes the video against the memory on: tests/eval/test_small_bundle_eval.py."""

import numpy as np
import pytest

from mirage_jax.data.worlds import make_clip
from mirage_jax.diffusion import FlowEuler
from mirage_jax.errors import ConfigError
from mirage_jax.generate.pipeline import tiny_pipeline
from mirage_jax.generate.providers import GeometryDepth
from mirage_jax.generate.rollout import LATENTS_PER_CHUNK, RolloutConfig, rollout
from mirage_jax.models.mirage import score_latent

HW = (32, 64)


def test_read_memory_off_zeroes_the_readout_only(recording):
    clip = make_clip(3, HW, 33, kind="indoor")
    pipe = tiny_pipeline(0)
    cfg = RolloutConfig(num_chunks=1, image_hw=HW, read_memory=False)
    _Recording, _SEEN = recording
    res = rollout(_Recording(pipe.model), pipe.vae, clip["frames"][0], clip["intrinsics"][0], clip["cam2world"],
                  pipe.encode_text("a room"), first_depth=clip["depth"][0], depth=GeometryDepth(clip["depth"]),
                  sampler=FlowEuler(num_steps=2), config=cfg)
    c = pipe.model.config.dit.in_channels
    score = np.asarray(score_latent(pipe.vae, LATENTS_PER_CHUNK + cfg.max_preceding, HW))
    assert len(_SEEN) == 2  # one model call per sampler step
    for control in _SEEN:
        assert control.shape[-1] == 2 * c and np.all(control[..., :c] == 0)  # no readout
        np.testing.assert_array_equal(control[0, ..., c:], score)  # the score half as with the memory on
    assert res.chunks[0]["readout_coverage"] > 0  # the memory held points the model would have seen
    assert int(res.memory.count) > 0  # ... and is still written
    with pytest.raises(ConfigError, match="read_memory"):
        RolloutConfig(read_memory="no")
