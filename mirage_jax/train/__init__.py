"""Two-stage training of the Mirage model (spec sections 4 and 10.5): the in-jit sample
construction (:mod:`.sample`), the loss and the sharded step (:mod:`.step`), checkpoints
(:mod:`.checkpoint`), the trainer loop and the ``mirage-jax train`` command (:mod:`.trainer`).
Synthetic latent clips for smoke runs and tests: :mod:`.synthetic`.
"""
