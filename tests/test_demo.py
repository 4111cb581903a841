"""``make demo``: the bundled small model (weights/small) loads with the parameter count of its
model card, and the demo's report has every field with the memory beating memory-off on its
own out-and-back trajectory (closed-loop PSNR; the sign, not a number).

The demo run here is 1 chunk (33 frames, the path turns back at frame 16) at 4 sampler steps
instead of `make demo`'s 3 chunks at 20 steps, to stay near a minute on the 2-core CI machine.
"""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "weights" / "small"
FIELDS = ("psnr_memory", "psnr_memory_off", "closed_loop_psnr_memory", "closed_loop_psnr_memory_off", "frames",
          "seconds", "scene_seed")


@pytest.fixture(scope="module")
def bundle():
    from mirage_jax.small import load_bundle

    return load_bundle(WEIGHTS)


def test_bundled_checkpoint_loads_and_matches_the_card(bundle):
    from mirage_jax.small import PARTS, param_count

    card = (WEIGHTS / "MODEL_CARD.md").read_text()
    total = int(re.search(r"Parameters \(total\): (\d+)", card).group(1))
    modules = dict(vae=bundle.pipeline.vae, mirage=bundle.pipeline.model, depth=bundle.depth,
                   text_encoder=bundle.text_encoder.encoder)
    assert sum(param_count(modules[p]) for p in PARTS) == total
    assert bundle.pipeline.model.config.lora_rank > 0  # stage 2's LoRA is part of the bundle
    report = json.loads((WEIGHTS / "report.json").read_text())
    assert report["params"]["total"] == total


def test_demo_report_and_memory_beats_memory_off(tmp_path):
    from mirage_jax.demo import DEMO_SEED, run_demo

    report = run_demo(WEIGHTS, tmp_path, num_chunks=1, sampler_steps=4, quiet=True)
    for key in FIELDS:
        assert key in report, key
    assert report["scene_seed"] == DEMO_SEED and report["frames"] == 33
    assert json.loads((tmp_path / "report.json").read_text())["frames"] == 33
    assert report["closed_loop_psnr_memory"] > report["closed_loop_psnr_memory_off"]
