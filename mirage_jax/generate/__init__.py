"""Generation: one chunk's denoising (:mod:`.denoise`), the chunked rollout with the latent memory
(:mod:`.rollout`), depth / mask providers (:mod:`.providers`), the models to run
(:mod:`.pipeline`), outputs (:mod:`.outputs`) and the ``mirage-jax generate`` command (:mod:`.cli`).

    from mirage_jax.generate import rollout, RolloutConfig, GeometryDepth
    result = rollout(model, vae, image, K, cam2world, text, first_depth=d0,
                     depth=GeometryDepth(depths), config=RolloutConfig(num_chunks=5))
"""

from mirage_jax.generate.denoise import chunk_timesteps, denoise_chunk, denoise_chunk_pure  # noqa: F401
from mirage_jax.generate.pipeline import Pipeline, check_checkpoint, load_pipeline, tiny_pipeline  # noqa: F401
from mirage_jax.generate.providers import (  # noqa: F401
    GeometryDepth,
    GeometryMask,
    JaxDepth,
    NoisyDepth,
    RenderedDepth,
    RenderedMask,
)
from mirage_jax.generate.rollout import (  # noqa: F401
    Rollout,
    RolloutConfig,
    RolloutResult,
    RolloutState,
    chunk_memory_analysis,
    chunk_plan,
    memory_bytes,
    rollout,
    set_step_hook,
)
