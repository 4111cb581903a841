"""The umT5 text encoder of Wan (transformers ``UMT5EncoderModel`` semantics) in Flax NNX,
and prompt encoding with the checkpoint's tokenizer.

    from mirage_jax.models.umt5 import UMT5Config, UMT5Encoder
    encoder = UMT5Encoder(UMT5Config.tiny(), rngs=nnx.Rngs(0))
    text = encoder(input_ids, attention_mask)          # [B, L, d_model], padded tail zero

Checkpoints: :func:`mirage_jax.convert.load_umt5`.
"""

from mirage_jax.models.umt5.model import UMT5Config, UMT5Encoder, relative_position_buckets  # noqa: F401
from mirage_jax.models.umt5.tokenizer import (  # noqa: F401
    PromptCache,
    UMT5Tokenizer,
    clean_prompt,
    encode_prompts,
    load_tokenizer,
)
