"""Sample construction with control_source="rgb": the readout comes from the record's stored
``rgb_control`` (explicit RGB-cache variant), per target start, with the latent path's layout."""

import jax
import numpy as np
import pytest

from mirage_jax.errors import ConfigError, InputError
from mirage_jax.train.sample import CLIP_KEYS, SampleConfig, build_inputs, check_clip_batch, target_starts
from mirage_jax.train.synthetic import synthetic_constants, synthetic_latent_clips

C, HW, IMG, F = 4, (8, 8), (32, 32), 8


def _batch(cfg, n=6):
    clips = synthetic_latent_clips(n, F, HW, C, IMG, 5, 6, seed=4)
    batch = {k: np.stack([c[k] for c in clips]) for k in CLIP_KEYS}
    J = len(target_starts(F, cfg.num_target, cfg.max_preceding))
    # entry (b, jj, e) is the constant 1000 b + 100 jj + e + 1 (never 0): which one landed where is readable
    code = 1000 * np.arange(n)[:, None, None] + 100 * np.arange(J)[None, :, None] + np.arange(cfg.num_control) + 1
    shape = (n, J, cfg.num_control, *HW, C)
    batch["rgb_control"] = np.broadcast_to(code[..., None, None, None], shape).astype(np.float32)
    return batch


def test_target_starts():
    assert target_starts(13, 9, 2) == range(2, 5)  # the small model's clips: 3 starts
    assert target_starts(10, 9, 2) == range(1, 2)  # a short clip: fewer preceding latents possible
    assert target_starts(9, 9, 2) == range(0, 1)


def test_rgb_readout_is_the_stored_control_of_the_drawn_start():
    cfg = SampleConfig(num_target=3, max_reference=1, max_preceding=2, image_hw=IMG, text_drop=0.0,
                       control_source="rgb")
    assert cfg.clip_keys == CLIP_KEYS + ("rgb_control",)
    batch = _batch(cfg)
    score, empty = synthetic_constants(cfg.num_control, HW, C, 5, 6)
    check_clip_batch(batch, cfg, score, empty)
    lo = target_starts(F, 3, 2).start
    fn = jax.jit(lambda k: build_inputs(k, batch, score, empty, cfg))
    seen_p, seen_j = set(), set()
    for seed in range(3):
        out = jax.tree.map(np.asarray, fn(jax.random.key(seed)))
        for b in range(6):
            j, P = int(out.start[b]), int(out.num_preceding[b])
            seen_p.add(P), seen_j.add(j)
            code = 1000 * b + 100 * (j - lo) + 1
            read = out.control[b, ..., :C]
            for t in range(3):  # target
                np.testing.assert_array_equal(read[t], code + t)
            for s in range(2):  # preceding slot s holds latent j - P + s = stored entry T + (P_max - P + s)
                np.testing.assert_array_equal(read[3 + s], code + 3 + (2 - P + s) if s < P else 0.0)
            np.testing.assert_array_equal(out.control[b, ..., C:], score)
            assert 0.0 < out.readout_hit[b] <= 1.0  # frame j's coverage (a metric)
    assert seen_p == {0, 1, 2} and len(seen_j) > 1


def test_rgb_readout_dropout_zeroes_the_stored_control():
    cfg = SampleConfig(num_target=3, max_reference=0, max_preceding=1, image_hw=IMG, readout_dropout=1.0,
                       control_source="rgb")
    batch = _batch(cfg, n=2)
    score, empty = synthetic_constants(cfg.num_control, HW, C, 5, 6)
    out = build_inputs(jax.random.key(0), batch, score, empty, cfg)
    np.testing.assert_array_equal(np.asarray(out.control[..., :C]), 0.0)


def test_rgb_errors_name_the_key():
    with pytest.raises(ConfigError, match="control_source"):
        SampleConfig(image_hw=IMG, control_source="pixels")
    cfg = SampleConfig(num_target=3, max_reference=0, max_preceding=1, image_hw=IMG, control_source="rgb")
    batch = _batch(cfg, n=2)
    score, empty = synthetic_constants(cfg.num_control, HW, C, 5, 6)
    lat = {k: batch[k] for k in CLIP_KEYS}
    check_clip_batch(lat, SampleConfig(num_target=3, max_reference=0, max_preceding=1, image_hw=IMG), score, empty)
    with pytest.raises(InputError, match="rgb_control.*lacks"):
        check_clip_batch(lat, cfg, score, empty)
    with pytest.raises(InputError, match=r"rgb_control: expected \[B, J = 5 target starts"):
        check_clip_batch({**lat, "rgb_control": batch["rgb_control"][:, :4]}, cfg, score, empty)
