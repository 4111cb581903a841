"""Generation: one chunk's denoising (:mod:`.denoise`), the chunked rollout with the latent memory
(:mod:`.rollout`), depth / mask providers (:mod:`.providers`), outputs (:mod:`.outputs`) and the
``mirage-jax generate`` command (:mod:`.cli`)."""

from mirage_jax.generate.denoise import chunk_timesteps, denoise_chunk, denoise_chunk_pure  # noqa: F401
