"""Two jax.distributed CPU processes (4 devices each) train the same parameters as one process
with 8 devices fed the same global batches (each process reads its own shard of the data)."""

import os
import socket
import subprocess
import sys
import textwrap

import grain
import numpy as np
from flax import nnx

from mirage_jax.config import load_config
from mirage_jax.data.pipeline import make_dataset, put_on_mesh
from mirage_jax.models.wan import WanDiTConfig
from mirage_jax.train.sample import CLIP_KEYS
from mirage_jax.train.trainer import Trainer

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
STEPS = 2

_SCRIPT = textwrap.dedent(
    """
    import os, sys
    pid, port, workdir, here = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    os.environ["JAX_PLATFORMS"] = "cpu"
    sys.path.insert(0, here)
    import jax, numpy as np
    from flax import nnx
    from test_multihost import make_config, factory
    from standin import standin_filter
    from mirage_jax.train.trainer import Trainer
    from jax.experimental import multihost_utils

    c = make_config(workdir)
    c.distributed.update(dict(initialize=True, coordinator_address=f"localhost:{port}", num_processes=2, process_id=pid))
    t = Trainer(c, model_factory=factory, trainable=standin_filter(1))
    assert jax.process_count() == 2 and jax.device_count() == 8
    t.run()
    t.close()
    flat = {".".join(map(str, p)): np.asarray(multihost_utils.process_allgather(v.get_value(), tiled=True))
            for p, v in nnx.to_flat_state(nnx.state(t.state.model))}
    if pid == 0:
        np.savez(os.path.join(workdir, "params.npz"), **flat)
    print("OK", pid, t.step)
    """
)


def make_config(workdir):
    c = load_config(os.path.join(ROOT, "configs", "train_tiny.py"))
    c.train.update(dict(workdir=str(workdir), steps=STEPS, checkpoint_every=STEPS, log_every=1, progress=False,
                        tensorboard=False))
    c.sample.max_reference = 0
    return c


def factory():
    sys.path.insert(0, HERE)
    from standin import StandInMirage

    dit = WanDiTConfig.tiny()
    return StandInMirage(dit.in_channels, dit.text_dim, rngs=nnx.Rngs(0))


def test_two_processes_equal_one(tmp_path):
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        port = sock.getsockname()[1]
    script = tmp_path / "worker.py"
    script.write_text(_SCRIPT)
    env = {**os.environ, "PYTHONPATH": ROOT}
    env.pop("XLA_FLAGS", None)
    procs = [
        subprocess.Popen([sys.executable, str(script), str(i), str(port), str(tmp_path / "two"), HERE], cwd=ROOT,
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)
    ]
    # Meanwhile, one process with 8 devices: the same config, fed the global batches that the two
    # processes assemble (process p's shard of the data gives rows [4p, 4p + 4) of each batch).
    sys.path.insert(0, HERE)
    from standin import standin_filter

    one = Trainer(make_config(tmp_path / "one"), model_factory=factory, trainable=standin_filter(1))
    c = one.config.data
    shards = [
        iter(make_dataset(dict(batch_size=c.batch_size, seed=c.seed, shuffle=c.shuffle, sampling="full", keys=CLIP_KEYS),
                          source=one.dataset_source, shard_options=grain.sharding.ShardOptions(p, 2, drop_remainder=True)))
        for p in range(2)
    ]
    for _ in range(STEPS):
        parts = [next(s) for s in shards]
        batch = {k: np.concatenate([p[k] for p in parts]) for k in CLIP_KEYS}
        one.step_fn(one.state, put_on_mesh(batch, one.mesh, num_batch_shards=1), one.score, one.empty_text)
    one.close()

    outs = [p.communicate(timeout=300)[0] for p in procs]
    for i, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0 and f"OK {i} {STEPS}" in out, out[-3000:]
    two = np.load(tmp_path / "two" / "params.npz")
    want = {".".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(one.state.model))}
    assert set(two.files) == set(want)
    for k in want:
        np.testing.assert_allclose(two[k], want[k], rtol=1e-6, atol=1e-7, err_msg=k)
    trained = [k for k in want if k.startswith("control.")]
    assert any(not np.allclose(want[k], factory_params()[k]) for k in trained)  # the steps did something


def factory_params():
    return {".".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(factory()))}
