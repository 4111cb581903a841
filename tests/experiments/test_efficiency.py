"""experiments/efficiency.py: the pure pieces (the VAE-encode extrapolation, the per-chunk totals,
the paper's ratios) and the figure drawn from a result; the measurement itself is the script's run."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


@pytest.fixture(scope="module")
def eff():
    sys.path.insert(0, str(EXPERIMENTS))  # the script imports experiments/common.py
    try:
        spec = importlib.util.spec_from_file_location("efficiency_script", EXPERIMENTS / "efficiency.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.path.remove(str(EXPERIMENTS))


def test_encode_seconds_extrapolates_in_4_frame_chunks(eff):
    cost = lambda n: 2.0 + 3.0 * ((n - 1) // 4)  # noqa: E731 - first frame 2 s, each 4-frame chunk 3 s
    s, how = eff.encode_seconds({1: cost(1), 5: cost(5)}, 33)
    assert s == pytest.approx(cost(33)) and how.startswith("extrapolated") and "t(33) = t(1) + 8 x" in how
    s, _ = eff.encode_seconds({5: cost(5), 13: cost(13)}, 33)
    assert s == pytest.approx(cost(33))
    s, how = eff.encode_seconds({1: 1.0, 33: 99.0}, 33)
    assert s == 99.0 and how.startswith("measured")
    for bad in ({1: 1.0}, {1: 1.0, 4: 2.0}):
        with pytest.raises(ValueError, match="1 \\+ 4 k"):
            eff.encode_seconds(bad, 33)


def test_add_vae_totals_and_ratios(eff):
    rows = [dict(latent_s=0.5, rgb_s=1.0, latent_bytes=10, rgb_bytes=250)]
    eff.add_vae(rows, 4.0)
    assert rows[0]["rgb_s"] == 5.0 and rows[0]["rgb_encode_s"] == 4.0
    assert rows[0]["time_ratio_rgb_over_latent"] == 10.0 and rows[0]["bytes_ratio_rgb_over_latent"] == 25.0


def test_paper_ratios_match_the_papers_claims(eff):
    r = eff.paper_ratios()
    # "55x lower cache memory": Spatia / Mirage at chunk 5 (124 / 2.25)
    assert max(r["cache_mib"]["Spatia"]) == pytest.approx(55.11, abs=0.01)
    assert r["seconds_per_frame"]["Gen3C"][0] == pytest.approx(2.80 / 0.79, abs=0.01)
    assert set(r["seconds_per_frame"]) == {"Gen3C", "Spatia", "VMem"}


def test_plot_from_a_result(eff, tmp_path):
    pytest.importorskip("matplotlib")
    rows = [
        dict(chunk=c, latent_s=0.01 * c, rgb_s=50.0 + c, rgb_render_s=1.0 * c, rgb_write_s=0.1, rgb_encode_s=49.0,
             latent_bytes=c * 2**20, rgb_bytes=c * 100 * 2**20)
        for c in (1, 2)
    ]
    eff.add_vae(rows, 0.0)
    result = dict(
        chunks=rows,
        fusion=[dict(ring_bytes=c * 2**20, fuse_bytes=2**20) for c in (1, 2)],
        paper_ratios=eff.paper_ratios(),
        config=dict(image_hw=[64, 128], latent_hw=[4, 8], channels=8, features_dtype="float32", voxel=0.05),
        info=dict(cpu_count=2, load_average_at_start=[1.0, 1.0, 1.0]),
        vae=dict(config="tiny22", method="measured", seconds=49.0),
    )
    out = tmp_path / "fig.png"
    eff.plot(result, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
