"""denoise_chunk: the reference's chunk loop (spec 10.6-10.7) against an independent transcription
that drives diffusers' UniPCMultistepScheduler with the same model function."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mirage_jax.diffusion import FlowEuler, FlowUniPC
from mirage_jax.diffusion.samplers import SIGMA_MAX
from mirage_jax.errors import InputError
from mirage_jax.generate import denoise_chunk
from mirage_jax.generate.denoise import TRACE_COUNTS, chunk_timesteps
from mirage_jax.models.mirage import MirageConfig, MirageModel

B, T, H, W, C, L = 1, 4, 4, 4, 4, 3
STEPS = 6


@pytest.fixture(scope="module")
def setup():
    cfg = MirageConfig.tiny()
    model = MirageModel(cfg, rngs=nnx.Rngs(3))
    # after_proj is zero-initialised: give the control branch a voice so the test sees it.
    for var in jax.tree.leaves(nnx.state(model.control.after_proj, nnx.Param), is_leaf=lambda x: isinstance(x, nnx.Variable)):
        var.set_value(0.05 * jax.random.normal(jax.random.key(1), var.get_value().shape))
    k = jax.random.split(jax.random.key(0), 6)
    d = dict(
        noise=jax.random.normal(k[0], (B, T, H, W, C)),
        first=jax.random.normal(k[1], (B, H, W, C)),
        ref=jax.random.normal(k[2], (B, 2, H, W, C)),
        pre=jax.random.normal(k[3], (B, 2, H, W, C)),
        control=jax.random.normal(k[4], (B, T + 2, H, W, 2 * C)),
        text=jax.random.normal(k[5], (B, L, cfg.dit.text_dim)),
    )
    return model, d


def _transcription(model, d, num_steps):
    """The reference's loop written from the spec with diffusers' scheduler (fp32 torch)."""
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    sch = diffusers.UniPCMultistepScheduler(
        num_train_timesteps=1000, use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=5.0,
        solver_order=2, solver_type="bh2", predict_x0=True, lower_order_final=True, final_sigmas_type="zero")
    sch.set_timesteps(sigmas=np.linspace(SIGMA_MAX, 0.0, num_steps + 1)[:-1])
    graphdef, state = nnx.split(model)
    fwd = jax.jit(lambda s, x, t, c, txt: nnx.merge(graphdef, s)(x, t, txt, c, num_reference=2))
    ref, pre = np.asarray(d["ref"]), np.asarray(d["pre"])
    first = torch.from_numpy(np.array(d["first"]))
    x = torch.from_numpy(np.array(d["noise"]))
    x[:, 0] = first
    for t in sch.timesteps:
        ts = np.array([0, 0] + [0] + [int(t)] * (T - 1) + [0, 0], np.int32)
        lat = np.concatenate([ref, x.numpy(), pre], axis=1)
        v = np.asarray(fwd(state, lat, ts, d["control"], d["text"]))[:, 2:2 + T]
        x = sch.step(torch.from_numpy(v), t, x).prev_sample
        x[:, 0] = first
    return x.numpy()


@pytest.mark.parity
def test_denoise_chunk_matches_the_transcribed_reference_loop(setup):
    model, d = setup
    want = _transcription(model, d, STEPS)
    got = np.asarray(denoise_chunk(model, FlowUniPC(num_steps=STEPS), d["noise"], d["first"], d["control"],
                                   d["text"], reference=d["ref"], preceding=d["pre"]))
    scale = np.abs(want).max()
    assert np.abs(got - want).max() < 1e-4 * scale
    np.testing.assert_array_equal(got[:, 0], np.asarray(d["first"]))  # re-imposed after the last step
    assert np.abs(got[:, 1:] - np.asarray(d["noise"])[:, 1:]).max() > 0.1  # it did denoise


def test_padded_slots_equal_the_unpadded_call_and_one_program_serves_all_counts(setup):
    model, d = setup
    sampler = FlowEuler(num_steps=3)
    # one real reference (the last slot), one real preceding frame (the first slot)
    want = denoise_chunk(model, sampler, d["noise"], d["first"], d["control"][:, :T + 1], d["text"],
                         reference=d["ref"][:, 1:], preceding=d["pre"][:, :1])
    before = TRACE_COUNTS["denoise_chunk"]
    outs = []
    for rm, pm in (([False, True], [True, False]), ([True, True], [True, True]), ([False, False], [False, False])):
        outs.append(denoise_chunk(model, sampler, d["noise"], d["first"], d["control"], d["text"],
                                  reference=d["ref"], preceding=d["pre"],
                                  reference_mask=jnp.array([rm]), preceding_mask=jnp.array([pm])))
    assert TRACE_COUNTS["denoise_chunk"] - before == 1
    np.testing.assert_allclose(np.asarray(outs[0]), np.asarray(want), atol=2e-5 * float(jnp.abs(want).max()))
    assert float(jnp.abs(outs[1] - outs[0]).max()) > 1e-3  # the masks matter


def test_timesteps_and_errors(setup):
    model, d = setup
    np.testing.assert_array_equal(chunk_timesteps(7, 2, 4, 1), [0, 0, 0, 7, 7, 7, 0])
    s = FlowEuler(num_steps=1)
    with pytest.raises(InputError, match="first_latent"):
        denoise_chunk(model, s, d["noise"], d["first"][:, :2], d["control"], d["text"])
    with pytest.raises(InputError, match="control"):
        denoise_chunk(model, s, d["noise"], d["first"], d["control"], d["text"])  # T+P = 6 != 4
    with pytest.raises(InputError, match="reference_mask"):
        denoise_chunk(model, s, d["noise"], d["first"], d["control"], d["text"], reference=d["ref"],
                      preceding=d["pre"], reference_mask=jnp.ones((1, 3), bool))


def test_scanned_layers_run_inside_the_sampler_loop(setup):
    """The 5B runtime stacks the layers (nnx.scan inside the model) inside the fori_loop."""
    from mirage_jax.models.wan.layers import WanRuntime

    _, d = setup
    model = MirageModel(MirageConfig.tiny(), WanRuntime(scan_layers=True), rngs=nnx.Rngs(3))
    x = denoise_chunk(model, FlowEuler(num_steps=1), d["noise"], d["first"], d["control"][:, :T], d["text"])
    assert x.shape == d["noise"].shape and bool(jnp.all(jnp.isfinite(x)))
