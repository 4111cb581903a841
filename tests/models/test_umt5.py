"""umT5 text encoder: parity with transformers' UMT5EncoderModel, per-sample padding, input
checks, config validation, tokenizers and the prompt cache."""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mirage_jax.convert.umt5 import encoder_from_state, export_state
from mirage_jax.errors import ConfigError, FileFormatError, InputError
from mirage_jax.models.umt5 import (
    PromptCache,
    UMT5Config,
    UMT5Encoder,
    clean_prompt,
    encode_prompts,
    load_tokenizer,
    relative_position_buckets,
)
from mirage_jax.models.wan.layers import WanRuntime

CFG = UMT5Config.tiny()
L = 40  # > max_distance 16 of the tiny config: exact, logarithmic and clamped buckets all occur
LENS = (40, 23, 5)
# One compiled program per shape is far cheaper than eager op-by-op dispatch.
run = nnx.jit(lambda enc, ids, mask: enc(ids, mask))


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    mask = (np.arange(L)[None] < np.array(LENS)[:, None]).astype(np.int32)
    ids = rng.integers(2, CFG.vocab_size, (len(LENS), L)).astype(np.int32) * mask
    return ids, mask


@pytest.fixture(scope="module")
def encoder():
    enc = UMT5Encoder(CFG, rngs=nnx.Rngs(0))
    # Non-trivial norm scales (the init's ones would hide a swapped or missing norm).
    for i, blk in enumerate(enc.blocks):
        for j, norm in enumerate((blk.norm1, blk.norm2)):
            norm.scale[...] = 1.0 + 0.3 * jax.random.normal(jax.random.key(10 * i + j), norm.scale.shape)
    enc.final_norm.scale[...] = 1.0 + 0.3 * jax.random.normal(jax.random.key(99), enc.final_norm.scale.shape)
    return enc


# ------------------------------------------------------------------------------------------------
# Parity with transformers.
# ------------------------------------------------------------------------------------------------


@pytest.mark.parity
def test_matches_transformers_with_padding(encoder):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = transformers.UMT5EncoderModel(transformers.UMT5Config(**CFG.to_transformers())).eval()
    state = {k: torch.from_numpy(np.array(v)) for k, v in export_state(encoder).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert set(missing) <= {"encoder.embed_tokens.weight"} and not unexpected  # tied to shared.weight
    ids, mask = _batch()
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask)).last_hidden_state.numpy()
    out = np.asarray(run(encoder, ids, mask))
    assert out.dtype == np.float32 and out.shape == (3, L, CFG.d_model)
    for b, n in enumerate(LENS):
        scale = np.abs(ref[b, :n]).max()
        assert np.abs(out[b, :n] - ref[b, :n]).max() < 1e-4 * scale, b
        assert np.all(out[b, n:] == 0.0)  # the padded tail, per sample


@pytest.mark.parity
@pytest.mark.parametrize("cfg", [UMT5Config.umt5_xxl(), CFG], ids=["xxl", "tiny"])
def test_buckets_match_transformers(cfg):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    attn = transformers.models.umt5.modeling_umt5.UMT5Attention(
        transformers.UMT5Config(**cfg.to_transformers()), has_relative_attention_bias=True
    )
    n = 600
    rel = torch.arange(n)[None, :] - torch.arange(n)[:, None]
    ref = attn._relative_position_bucket(rel).numpy()
    got = relative_position_buckets(n, n, cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance)
    np.testing.assert_array_equal(got, ref)
    assert len(np.unique(got)) == cfg.relative_attention_num_buckets - 1  # no offset is "> 0 and exact 0"


@pytest.mark.parity
def test_xxl_parameter_count_matches_transformers():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = UMT5Config.umt5_xxl()
    with torch.device("meta"):
        model = transformers.UMT5EncoderModel(transformers.UMT5Config(**cfg.to_transformers()))
    ref = sum(p.numel() for p in model.parameters())  # the tied embedding counted once
    abstract = nnx.eval_shape(lambda: UMT5Encoder(cfg))
    ours = sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    assert ref == ours == cfg.num_params() == 5_680_910_336


# ------------------------------------------------------------------------------------------------
# Padding, layouts and dtypes (no torch).
# ------------------------------------------------------------------------------------------------


def test_samples_are_independent_of_batch_and_padding(encoder):
    ids, mask = _batch(1)
    out = np.asarray(run(encoder, ids, mask))
    for b in (1, 2):
        n = LENS[b]
        alone = np.asarray(run(encoder, ids[b : b + 1, :n], mask[b : b + 1, :n]))[0]  # no padding at all
        np.testing.assert_allclose(out[b, :n], alone, rtol=1e-5, atol=1e-5 * np.abs(alone).max())
    # Padding changes the result only where it is padding: a different pad id gives the same output.
    np.testing.assert_array_equal(np.asarray(run(encoder, np.where(mask == 1, ids, 7), mask)), out)


def test_scanned_and_remat_layouts_agree(encoder):
    ids, mask = _batch(2)
    ref = np.asarray(run(encoder, ids, mask))
    state = export_state(encoder)
    for runtime in (WanRuntime(scan_layers=True), WanRuntime(remat="full")):
        other = encoder_from_state(CFG, state, runtime=runtime)
        np.testing.assert_allclose(np.asarray(run(other, ids, mask)), ref, rtol=1e-5, atol=1e-5)


def test_bfloat16_compute_stays_close(encoder):
    ids, mask = _batch(3)
    ref = np.asarray(run(encoder, ids, mask))
    bf = encoder_from_state(CFG, export_state(encoder), runtime=WanRuntime(dtype="bfloat16"))
    out = run(bf, ids, mask)
    assert out.dtype == jnp.bfloat16
    out = np.asarray(out.astype(jnp.float32))
    assert np.abs(out - ref).max() < 0.05 * np.abs(ref).max()
    assert np.all(out[mask == 0] == 0)


def test_every_parameter_has_logical_names(encoder):
    from mirage_jax.sharding import get_rules

    known = {name for name, _ in get_rules("fsdp")}
    for path, var in nnx.to_flat_state(nnx.state(encoder, nnx.Param)):
        names = var.get_metadata()["out_sharding"]
        assert len(names) == var.get_value().ndim, path
        assert all(n is None or n in known for n in names), (path, names)


# ------------------------------------------------------------------------------------------------
# Bad inputs and configs.
# ------------------------------------------------------------------------------------------------


def test_bad_inputs_raise(encoder):
    ids, mask = _batch()
    with pytest.raises(InputError, match=r"outside \[0, 128\)"):
        encoder(np.where(mask == 1, ids, 128), mask)
    with pytest.raises(InputError, match="outside"):
        encoder(ids - 3, mask)
    with pytest.raises(InputError, match="must match input_ids"):
        encoder(ids, mask[:, :-1])
    with pytest.raises(InputError, match="integer"):
        encoder(ids.astype(np.float32), mask)
    with pytest.raises(InputError, match="only 0 and 1"):
        encoder(ids, mask * 2)
    # Under jit the ids cannot be inspected: a bad id gives NaN, never a clipped lookup.
    out = run(encoder, jnp.asarray(ids).at[0, 0].set(-1), jnp.asarray(mask))
    assert np.isnan(np.asarray(out[0])).all()


def test_config_validation():
    with pytest.raises(ConfigError, match="float16"):
        UMT5Encoder(CFG, WanRuntime(dtype="float16"))
    with pytest.raises(ConfigError, match="gated"):
        UMT5Config(feed_forward_proj="relu", dense_act_fn="relu")
    with pytest.raises(ConfigError, match="contradicts"):
        UMT5Config(dense_act_fn="relu")
    with pytest.raises(ConfigError, match="d_model"):
        UMT5Config(d_model=0)
    # The config.json of Wan's diffusers text_encoder (umt5-xxl).
    wan = {"architectures": ["UMT5EncoderModel"], "classifier_dropout": 0.0, "d_ff": 10240, "d_kv": 64, "d_model": 4096,
           "decoder_start_token_id": 0, "dense_act_fn": "gelu_new", "dropout_rate": 0.1, "eos_token_id": 1,
           "feed_forward_proj": "gated-gelu", "initializer_factor": 1.0, "is_encoder_decoder": True,
           "is_gated_act": True, "layer_norm_epsilon": 1e-06, "model_type": "umt5", "num_decoder_layers": 24,
           "num_heads": 64, "num_layers": 24, "output_past": True, "pad_token_id": 0,
           "relative_attention_max_distance": 128, "relative_attention_num_buckets": 32, "scalable_attention": True,
           "tie_word_embeddings": False, "tokenizer_class": "T5Tokenizer", "torch_dtype": "float32",
           "transformers_version": "4.49.0", "use_cache": True, "vocab_size": 256384}
    assert UMT5Config.from_transformers(wan) == UMT5Config.umt5_xxl()
    d = CFG.to_transformers()
    assert UMT5Config.from_transformers(d) == CFG
    assert UMT5Config.from_transformers({**d, "dense_act_fn": "gelu", "dropout_rate": 0.0}) == CFG
    assert UMT5Config.from_transformers({**d, "feed_forward_proj": "gated-silu"}).dense_act_fn == "silu"
    with pytest.raises(ConfigError, match="model_type 't5'"):
        UMT5Config.from_transformers({**d, "model_type": "t5"})
    with pytest.raises(ConfigError, match="d_ff: expected an integer"):
        UMT5Config.from_transformers({**d, "d_ff": 48.0})
    with pytest.raises(ConfigError, match="decoder"):
        UMT5Config.from_transformers({**d, "is_decoder": True})


# ------------------------------------------------------------------------------------------------
# Tokenizers and encode_prompts.
# ------------------------------------------------------------------------------------------------

SENTENCES = [
    "a camera flies through a stone corridor with arches",
    "a red car drives along a coastal road at sunset",
    "the living room has a wooden floor and a large window",
    "a forest path covered with autumn leaves",
] * 4


@pytest.fixture(scope="module")
def tokenizer_json(tmp_path_factory):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers, processors, trainers

    tok = tokenizers.Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=100, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>")
    tok.train_from_iterator(SENTENCES, trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return path


def test_tokenizer_json(tokenizer_json, caplog):
    tok = load_tokenizer(tokenizer_json.parent)  # the directory finds tokenizer.json
    assert tok is load_tokenizer(tokenizer_json)  # one loaded tokenizer per path
    ids, mask = tok(["a red   car\n drives", "a &amp;forest"], max_length=12)
    assert ids.dtype == mask.dtype == np.int32 and ids.shape == (2, 12)
    for b in range(2):
        n = int(mask[b].sum())
        assert np.all(mask[b, :n] == 1) and np.all(mask[b, n:] == 0)
        assert ids[b, n - 1] == tok.eos_id and np.all(ids[b, n:] == tok.pad_id)
    np.testing.assert_array_equal(tok(["a red car drives"], 12)[0], ids[:1])  # whitespace cleaned
    with caplog.at_level(logging.WARNING):
        long_ids, long_mask = tok([" ".join(SENTENCES[:4])], max_length=8)
    assert "truncated to 8" in caplog.text
    assert long_mask.all() and long_ids[0, -1] == tok.eos_id
    full = tok([" ".join(SENTENCES[:4])], max_length=200)[0][0]
    np.testing.assert_array_equal(long_ids[0, :7], full[:7])


@pytest.mark.parity
def test_tokenizer_json_matches_transformers(tokenizer_json):
    transformers = pytest.importorskip("transformers")
    ref = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_json), pad_token="<pad>", eos_token="</s>")
    texts = [SENTENCES[0], " ".join(SENTENCES[:4]), "forest"]
    want = ref(texts, padding="max_length", truncation=True, max_length=16, add_special_tokens=True, return_tensors="np")
    ids, mask = load_tokenizer(tokenizer_json)(texts, 16)
    np.testing.assert_array_equal(ids, want["input_ids"])
    np.testing.assert_array_equal(mask, want["attention_mask"])


def test_sentencepiece_model(tmp_path):
    spm = pytest.importorskip("sentencepiece")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(SENTENCES))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "spiece"), vocab_size=40,
                                   pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
    tok = load_tokenizer(tmp_path)
    assert tok.kind == "sentencepiece"
    ids, mask = tok([SENTENCES[1]], max_length=64)
    n = int(mask.sum())
    want = spm.SentencePieceProcessor(model_file=str(tmp_path / "spiece.model")).encode(SENTENCES[1]) + [1]
    assert ids[0, :n].tolist() == want and np.all(ids[0, n:] == 0)


def test_tokenizer_errors(tmp_path):
    with pytest.raises(FileFormatError, match="neither tokenizer.json nor spiece.model"):
        load_tokenizer(tmp_path)
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(FileFormatError, match="tokenizer.json"):
        load_tokenizer(bad)
    with pytest.raises(InputError, match="must be a str"):
        clean_prompt(3)


def test_encode_prompts_caches_per_prompt(tokenizer_json, encoder):
    tok = load_tokenizer(tokenizer_json)
    cache = PromptCache(size=2)
    texts = [SENTENCES[0], SENTENCES[1], SENTENCES[0]]
    out = encode_prompts(texts, tok, encoder, max_length=40, cache=cache)
    assert out.shape == (3, 40, CFG.d_model) and out.dtype == jnp.float32
    ids, mask = tok(texts, 40)
    np.testing.assert_allclose(np.asarray(out), np.asarray(run(encoder, ids, mask)), rtol=1e-5, atol=1e-5)
    assert np.all(np.asarray(out)[mask == 0] == 0)
    assert (cache.hits, cache.misses, len(cache)) == (0, 2, 2)
    again = encode_prompts([SENTENCES[1]], tok, encoder, max_length=40, cache=cache)
    np.testing.assert_array_equal(np.asarray(again[0]), np.asarray(out[1]))
    assert cache.hits == 1
    encode_prompts([SENTENCES[2]], tok, encoder, max_length=40, cache=cache)  # evicts SENTENCES[0]
    assert len(cache) == 2 and cache.get(SENTENCES[0]) is None
    # The default cache lives with the encoder: a second call is served from it.
    a = encode_prompts(SENTENCES[3], tokenizer_json, encoder, max_length=40)
    b = encode_prompts(SENTENCES[3], tokenizer_json, encoder, max_length=40)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(InputError, match="at least one"):
        encode_prompts([], tok, encoder)
