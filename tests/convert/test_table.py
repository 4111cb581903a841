"""The declarative conversion table: coverage errors, shape checks, exact inverse (export)."""

import numpy as np
import pytest

from mirage_jax.convert.table import CONV, IDENTITY, LINEAR, ConversionError, Rule, convert, export

RULES = [
    Rule(r"blocks\.(?P<i>\d+)\.proj\.weight", "blocks.{i}.proj.kernel", LINEAR),
    Rule(r"blocks\.(?P<i>\d+)\.proj\.bias", "blocks.{i}.proj.bias", IDENTITY),
    Rule(r"patch\.weight", "patch.kernel", CONV),
]


def _source(rng):
    return {
        "blocks.0.proj.weight": rng.normal(size=(5, 3)).astype(np.float32),
        "blocks.0.proj.bias": rng.normal(size=(5,)).astype(np.float32),
        "blocks.1.proj.weight": rng.normal(size=(5, 3)).astype(np.float32),
        "blocks.1.proj.bias": rng.normal(size=(5,)).astype(np.float32),
        "patch.weight": rng.normal(size=(6, 4, 1, 2, 2)).astype(np.float32),
    }


TARGET = {
    "blocks.0.proj.kernel": (3, 5),
    "blocks.0.proj.bias": (5,),
    "blocks.1.proj.kernel": (3, 5),
    "blocks.1.proj.bias": (5,),
    "patch.kernel": (1, 2, 2, 4, 6),
}


def test_convert_and_export_round_trip_exactly():
    src = _source(np.random.default_rng(0))
    out = convert(src, RULES, TARGET)
    np.testing.assert_array_equal(out["blocks.1.proj.kernel"], src["blocks.1.proj.weight"].T)
    np.testing.assert_array_equal(out["patch.kernel"][0, 1, 0], src["patch.weight"][:, :, 0, 1, 0].T)
    back = export(out, RULES)
    assert set(back) == set(src)
    for k in src:
        assert back[k].dtype == src[k].dtype
        np.testing.assert_array_equal(back[k], src[k])


def test_coverage_error_lists_missing_and_unexpected():
    src = _source(np.random.default_rng(1))
    del src["blocks.1.proj.bias"]
    src["blocks.0.extra.weight"] = np.zeros(2, np.float32)
    with pytest.raises(ConversionError) as err:
        convert(src, RULES, TARGET)
    msg = str(err.value)
    assert "blocks.1.proj.bias" in msg and "not filled (1)" in msg
    assert "blocks.0.extra.weight" in msg and "unexpected source keys (1)" in msg


def test_ignore_patterns_and_shape_mismatch():
    src = _source(np.random.default_rng(2))
    src["num_batches_tracked"] = np.zeros((), np.int64)
    convert(src, RULES, TARGET, ignore=[r"num_batches_tracked"])  # explicitly ignored: fine
    src.pop("num_batches_tracked")
    src["blocks.0.proj.weight"] = np.zeros((3, 5), np.float32)  # transposed by mistake
    with pytest.raises(ConversionError, match=r"(?s)shape mismatches \(1\).*blocks\.0\.proj\.weight"):
        convert(src, RULES, TARGET)


def test_two_sources_for_one_parameter_is_an_error():
    rules = RULES + [Rule(r"alias\.(?P<i>\d+)\.bias", "blocks.{i}.proj.bias")]
    src = _source(np.random.default_rng(3))
    src["alias.0.bias"] = src["blocks.0.proj.bias"]
    with pytest.raises(ConversionError, match=r"filled twice \(1\)"):
        convert(src, rules, TARGET)


def test_export_skips_a_rule_whose_rebuilt_key_does_not_match_its_source():
    rules = [
        Rule(r"attn\.(?P<name>to_q|to_k)\.bias", "attn.{name}.bias"),
        Rule(r"attn\.to_out\.0\.bias", "attn.to_out.bias"),
    ]
    src = {"attn.to_q.bias": np.ones(2), "attn.to_out.0.bias": np.zeros(2)}
    out = convert(src, rules, {"attn.to_q.bias": (2,), "attn.to_out.bias": (2,)})
    assert set(export(out, rules)) == set(src)
