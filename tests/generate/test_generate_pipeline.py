"""Checkpoint directories for generation: the tiny pipeline saved in the documented layout and loaded back."""

import jax
import numpy as np
import pytest
from flax import nnx

from mirage_jax.convert import save_diffusers_vae, save_umt5
from mirage_jax.convert.mirage import save_mirage_reference
from mirage_jax.errors import ConfigError
from mirage_jax.generate.pipeline import check_checkpoint, load_pipeline, tiny_pipeline


def _params(module):
    return {k: np.asarray(v.get_value()) for k, v in nnx.to_flat_state(nnx.state(module, nnx.Param))}


def test_checkpoint_directory_round_trip(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers, processors, trainers

    p = tiny_pipeline(0)  # the seed the other tests use: its initialiser is compiled once
    d = tmp_path / "ckpt"
    with pytest.raises(ConfigError, match="not a directory"):
        check_checkpoint(str(d))
    save_mirage_reference(p.model, d)
    with pytest.raises(ConfigError, match="no vae, text_encoder"):
        check_checkpoint(str(d))
    save_diffusers_vae(p.vae, p.vae.config, d / "vae")
    save_umt5(p.text_encoder, d / "text_encoder")
    tok = tokenizers.Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.train_from_iterator(["a room with a red chair", "a street at night", "the kitchen"],
                            trainers.UnigramTrainer(vocab_size=40, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>"))
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    (d / "tokenizer").mkdir()
    tok.save(str(d / "tokenizer" / "tokenizer.json"))
    files = check_checkpoint(str(d))
    assert files["model"].name == "orbax" and files["control"] is None
    q = load_pipeline(str(d), text_len=8)
    for a, b in ((p.model, q.model), (p.vae, q.vae), (p.text_encoder, q.text_encoder)):
        pa, pb = _params(a), _params(b)
        assert pa.keys() == pb.keys()
        for k in pa:
            np.testing.assert_array_equal(pa[k], pb[k], err_msg=k)
    text = q.encode_text("a red chair")
    assert text.shape == (1, 8, p.model.config.dit.text_dim) and bool(jax.numpy.all(jax.numpy.isfinite(text)))
