"""In-jit sample construction: layout, padding, memory readouts, references, text drop."""

import jax
import numpy as np
import pytest

from mirage_jax.errors import ConfigError, InputError
from mirage_jax.train.sample import CLIP_KEYS, SampleConfig, build_inputs, check_clip_batch
from mirage_jax.train.synthetic import synthetic_constants, synthetic_latent_clips

C, HW, IMG = 4, (8, 8), (32, 32)


def _batch(n=8, frames=8):
    clips = synthetic_latent_clips(n, frames, HW, C, IMG, 5, 6, seed=3)
    return {k: np.stack([c[k] for c in clips]) for k in CLIP_KEYS}


def test_build_inputs_layout_and_readouts():
    cfg = SampleConfig(num_target=3, max_reference=2, max_preceding=1, image_hw=IMG, text_drop=0.5)
    batch = _batch()
    score, empty = synthetic_constants(cfg.num_control, HW, C, 5, 6)
    fn = jax.jit(lambda k: build_inputs(k, batch, score, empty, cfg))
    seen_r, seen_p, seen_drop = set(), set(), set()
    for seed in range(4):
        out = jax.tree.map(np.asarray, fn(jax.random.key(seed)))
        assert out.latents.shape == (8, 6, 8, 8, C) and out.control.shape == (8, 4, 8, 8, 2 * C)
        for b in range(8):
            lat = batch["latents"][b]
            j, R, P = int(out.start[b]), int(out.num_reference[b]), int(out.num_preceding[b])
            assert 1 <= j <= 8 - 3 and 0 <= P <= 1 and 0 <= R <= 2
            seen_r.add(R), seen_p.add(P)
            # [refs (padding first) | target | preceding (padding last)]
            np.testing.assert_array_equal(out.frame_mask[b], [False] * (2 - R) + [True] * R + [True] * 3 + [P == 1])
            np.testing.assert_array_equal(out.latents[b, 2:5], lat[j : j + 3])
            if P:
                np.testing.assert_array_equal(out.latents[b, 5], lat[j - 1])
            refs = out.reference_index[b]
            assert np.all(refs[: 2 - R] == -1) and np.all(refs[2 - R :] >= 0)
            for r, f in enumerate(refs[2 - R :]):
                assert not (j - P <= f < j + 3), (f, j, P)
                np.testing.assert_array_equal(out.latents[b, 2 - R + r], lat[f])
            np.testing.assert_array_equal(out.latents[b, : 2 - R], 0.0)
            # Control: readout || score; the memory holds frame j, read at frame j's own pose.
            np.testing.assert_array_equal(out.control[b, ..., C:], score)
            read0 = out.control[b, 0, ..., :C]
            hit = np.any(read0 != 0, axis=-1)
            assert hit.mean() > 0.5
            np.testing.assert_allclose(read0[hit], lat[j][hit], atol=1e-6)
            if not P:
                np.testing.assert_array_equal(out.control[b, 3, ..., :C], 0.0)
            dropped = np.array_equal(out.text[b], empty)
            assert dropped or np.array_equal(out.text[b], batch["text"][b])
            seen_drop.add(dropped)
    assert seen_r == {0, 1, 2} and seen_p == {0, 1} and seen_drop == {True, False}


def test_sample_config_and_batch_errors():
    with pytest.raises(ConfigError, match="num_target"):
        SampleConfig(num_target=1)
    with pytest.raises(ConfigError, match="text_drop"):
        SampleConfig(text_drop=1.5)
    with pytest.raises(ConfigError, match="image_hw"):
        SampleConfig(image_hw=(32.0, 32))
    cfg = SampleConfig(num_target=3, max_reference=2, max_preceding=1, image_hw=IMG)
    batch = _batch(2)
    score, empty = synthetic_constants(cfg.num_control, HW, C, 5, 6)
    check_clip_batch(batch, cfg, score, empty)
    with pytest.raises(InputError, match="lacks keys"):
        check_clip_batch({k: v for k, v in batch.items() if k != "depth"}, cfg, score, empty)
    with pytest.raises(InputError, match="score latent"):
        check_clip_batch(batch, cfg, score[:2], empty)
    with pytest.raises(InputError, match="depth"):
        check_clip_batch({**batch, "depth": batch["depth"][:, :, :16]}, cfg, score, empty)
    with pytest.raises(InputError, match="num_target"):
        check_clip_batch(batch, SampleConfig(num_target=9, image_hw=IMG, max_preceding=1, max_reference=2), score, empty)
