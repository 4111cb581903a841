"""`mirage-jax convert`: checkpoints -> orbax -> loaders give the same parameters; every user
error exits 2 with one line naming the problem. No torch needed (sources written by our exporters)."""

import numpy as np
import pytest
from flax import nnx

from mirage_jax.convert import cli, load_transformer, load_vae
from mirage_jax.convert.place import place
from mirage_jax.convert.table import flat_state_arrays, flat_state_shapes
from mirage_jax.convert.wan_dit import canonical_arrays, save_wan_original_transformer
from mirage_jax.convert.wan_vae import save_diffusers_vae
from mirage_jax.models.wan import WanDiT, WanDiTConfig, WanVAE, WanVAEConfig


def random_model(factory, seed: int):
    """A model with random N(0, 0.1) parameters, placed without compiling an initialiser."""
    abstract = nnx.eval_shape(factory)
    rng = np.random.default_rng(seed)
    return place(abstract, {k: 0.1 * rng.standard_normal(s) for k, s in flat_state_shapes(abstract).items()})


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    cfg = WanVAEConfig.tiny("wan2.2")
    vae = random_model(lambda: WanVAE(cfg), 0)
    save_diffusers_vae(vae, cfg, root / "vae_src")
    dit = random_model(lambda: WanDiT(WanDiTConfig.tiny()), 1)
    save_wan_original_transformer(dit, root / "wan" / "dit.safetensors")  # no config.json: a preset is needed
    return dict(root=root, vae=vae, dit=dit)


def test_convert_vae_and_original_dit_to_orbax_and_back(sources, tmp_path):
    root, out = sources["root"], tmp_path / "ckpt"
    argv = ["--vae", str(root / "vae_src"), "--transformer", str(root / "wan" / "dit.safetensors"),
            "--format", "wan", "--config", "tiny", "--out", str(out)]
    # --format wan applies to both: the VAE source is a diffusers directory, so convert them apart.
    assert cli.main(argv[:2] + ["--out", str(out)]) == 0
    assert cli.main(argv[2:]) == 0
    got_cfg, got = load_vae(out / "vae")
    assert got_cfg == sources["vae"].config
    a, b = flat_state_arrays(sources["vae"]), flat_state_arrays(got)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    cfg, dit = load_transformer(out / "transformer")
    assert cfg == WanDiTConfig.tiny()
    a, b = canonical_arrays(sources["dit"]), canonical_arrays(dit)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _one_line_error(capsys, argv, *needles):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("mirage-jax convert: error: ")
    for needle in needles:
        assert needle in err, err


def test_user_errors_exit_2_with_one_line(sources, tmp_path, capsys):
    root = sources["root"]
    vae, dit = str(root / "vae_src"), str(root / "wan" / "dit.safetensors")
    out = str(tmp_path / "out")
    _one_line_error(capsys, ["--vae", vae, "--out", out, "--mesh", "1,16"], "--mesh 1,16 needs 16 devices")
    _one_line_error(capsys, ["--vae", vae, "--out", out, "--mesh", "8"], "--mesh", "'8'")
    _one_line_error(capsys, ["--vae", vae, "--out", out, "--mesh", "0,8"], "--mesh")
    (tmp_path / "afile").write_text("x")
    _one_line_error(capsys, ["--vae", vae, "--out", str(tmp_path / "afile")], "is an existing file")
    _one_line_error(capsys, ["--vae", str(tmp_path / "missing"), "--out", out], "missing: no such file")
    _one_line_error(capsys, ["--out", out], "--transformer and/or --vae")
    # The original DiT naming has no config.json: without --config the message names the fix.
    _one_line_error(capsys, ["--transformer", dit, "--format", "wan", "--out", out], "no config given", "wan22_ti2v_5b")
    _one_line_error(capsys, ["--transformer", dit, "--format", "wan", "--config", "huge", "--out", out],
                    "neither a preset")
    bad = tmp_path / "bad.json"
    for text, needle in (("[1, 2]", "JSON object"), ("{nope", "not valid JSON"),
                         ('{"dim": 40, "num_heads": 2, "in_dim": 4, "ffn_dim": 64, "num_layers": 2, "eps": "x"}',
                          "key 'eps': expected a number"),
                         ('{"dim": 40, "num_heads": 2, "in_dim": 4, "ffn_dim": 64, "num_layers": 2, "eps": NaN}',
                          "expected a finite number")):
        bad.write_text(text)
        _one_line_error(capsys, ["--transformer", dit, "--format", "wan", "--config", str(bad), "--out", out],
                        str(bad), needle)
    # A wrong config (valid JSON, wrong sizes) is a coverage error naming the parameters.
    wrong = tmp_path / "wrong.json"
    wrong.write_text('{"dim": 40, "num_heads": 2, "in_dim": 4, "ffn_dim": 32, "num_layers": 2, "text_dim": 24, "freq_dim": 16}')
    assert cli.main(["--transformer", dit, "--format", "wan", "--config", str(wrong), "--out", out]) == 2
    assert "ffn.proj_in.kernel" in capsys.readouterr().err
    # A diffusers VAE directory with a malformed config.json.
    broken = tmp_path / "broken_vae"
    broken.mkdir()
    (broken / "config.json").write_text('{"z_dim": "eight"}')
    _one_line_error(capsys, ["--vae", str(broken), "--out", out], "config.json", "z_dim", "expected an integer")
    # Existing outputs need --force.
    assert cli.main(["--vae", vae, "--out", out]) == 0
    capsys.readouterr()
    _one_line_error(capsys, ["--vae", vae, "--out", out], "pass --force")
