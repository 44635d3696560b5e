"""The Flax T5 encoder and its converter against the tiny golden file.

Golden data: `t5_tiny_reference.npz` in `testing.reference_dir()` (README
§9-§12): HF transformers' `T5EncoderModel` with a Flan-T5-style config and
random weights. Tolerances are README §12: table look-ups exact, hidden
states 1e-4 (not above 2e-4: the erf-vs-tanh GELU mistake is 6.4e-4).
"""

import json
import os
import tempfile
from unittest import mock

from absl.testing import absltest
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import safetensors
from safetensors import numpy as safetensors_np

from toprovar_jax import testing
from toprovar_jax.convert import common
from toprovar_jax.convert import t5 as t5_convert
from toprovar_jax.text import t5
from toprovar_jax.weights import strict

_HIDDEN_ATOL = 1e-4
_ERF_GELU_MIN_ERR = 2e-4  # README §12: the wrong GELU moves outputs 6.4e-4.
_TINY_PARAMS = 115_136
# 32128*2048 + 24*(4*2048^2 + 3*2048*5120 + 2*2048) + 32*32 + 2048.
_FLAN_T5_XL_PARAMS = 1_223_527_424
_EMBED_TOKENS = "encoder.embed_tokens.weight"
_Q0 = "encoder.block.0.layer.0.SelfAttention.q.weight"
_REL_BIAS = ("encoder.block.0.layer.0.SelfAttention."
             "relative_attention_bias.weight")

_encode = jax.jit(t5.encode, static_argnames=("config",))


def _max_abs(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a, np.float64) -
                             np.asarray(b, np.float64))))


def _reference():
  ref = testing.load_reference("t5_tiny_reference")
  return ref, common.strip_prefix(ref, "t5/")


def _assert_trees_equal(test, a, b):
  test.assertEqual(jax.tree.structure(a), jax.tree.structure(b))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


class T5ParityTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.ref, cls.sd = _reference()
    cls.config = t5_convert.config_from_state_dict(cls.sd)
    cls.params = t5_convert.convert_state_dict(cls.sd, cls.config)
    cls.mask = cls.ref["attention_mask"]
    cls.real = cls.mask.astype(bool)
    cls.out = jax.device_get(_encode(cls.params, cls.ref["input_ids"],
                                     cls.mask, config=cls.config))

  def test_config_inferred_from_shapes_is_the_tiny_one(self):
    self.assertEqual(self.config, t5.T5Config.tiny())
    self.assertEqual(t5.num_params(self.config), _TINY_PARAMS)

  def test_embeddings_exact(self):
    np.testing.assert_array_equal(self.out["embeddings"],
                                  self.ref["diag/embeddings"])

  def test_position_bias_exact(self):
    np.testing.assert_array_equal(self.out["position_bias"],
                                  self.ref["diag/position_bias"])

  def test_bucket_ids_exact(self):
    buckets = t5.relative_position_bucket(
        self.ref["diag/relative_position"], num_buckets=32, max_distance=128)
    np.testing.assert_array_equal(buckets,
                                  self.ref["diag/relative_position_bucket"])
    # README §9: 16 never occurs; the cap is reached from |r| = 91.
    self.assertNotIn(16, buckets)
    np.testing.assert_array_equal(
        t5.relative_position_bucket([-91, -90, 90, 91, 5000]),
        [15, 14, 30, 31, 31])

  def test_block_outputs(self):
    got, want = self.out["block_outputs"], self.ref["diag/block_outputs"]
    self.assertEqual(got.shape, (2, 2, 12, 64))
    self.assertLessEqual(_max_abs(got[:, self.real], want[:, self.real]),
                         _HIDDEN_ATOL)

  def test_last_hidden_state(self):
    got, want = self.out["last_hidden_state"], self.ref["last_hidden_state"]
    self.assertLessEqual(_max_abs(got[self.real], want[self.real]),
                         _HIDDEN_ATOL)
    # Padded queries are computed as in torch (README §9), and here match.
    self.assertLessEqual(_max_abs(got, want), _HIDDEN_ATOL)

  def test_long_sequence_reaches_every_bucket(self):
    out = _encode(self.params, self.ref["long/input_ids"],
                  self.ref["long/attention_mask"], config=self.config)
    self.assertLessEqual(
        _max_abs(out["last_hidden_state"], self.ref["long/last_hidden_state"]),
        _HIDDEN_ATOL)

  def test_padded_row_equals_row_alone(self):
    n = int(self.mask[0].sum())
    alone = _encode(self.params, self.ref["input_ids"][:1, :n],
                    self.mask[:1, :n], config=self.config)
    self.assertLessEqual(
        _max_abs(alone["last_hidden_state"][0],
                 self.out["last_hidden_state"][0, :n]), 1e-5)

  def test_padded_keys_do_not_leak(self):
    ids = self.ref["input_ids"].copy()
    ids[~self.real] = 77  # Any id: masked keys must get weight exactly 0.
    out = _encode(self.params, ids, self.mask, config=self.config)
    np.testing.assert_array_equal(
        np.asarray(out["last_hidden_state"])[self.real],
        self.out["last_hidden_state"][self.real])

  def test_mask_none_means_all_real(self):
    ids = self.ref["input_ids"][1:]  # Row 1 has no padding.
    model = t5.T5Encoder(self.config)
    np.testing.assert_array_equal(
        model.apply({"params": self.params}, ids),
        model.apply({"params": self.params}, ids, np.ones_like(ids)))

  def test_erf_gelu_would_fail_the_tolerance(self):
    # Guards the tolerance itself: the erf GELU must be caught (README §12).
    gelu = jax.nn.gelu
    with mock.patch.object(
        jax.nn, "gelu", lambda x, approximate=True: gelu(x, approximate=False)):
      wrong = t5.T5Encoder(self.config).apply(
          {"params": self.params}, self.ref["input_ids"], self.mask)
    err = _max_abs(np.asarray(wrong)[self.real],
                   self.ref["last_hidden_state"][self.real])
    self.assertGreater(err, _ERF_GELU_MIN_ERR)

  def test_bfloat16_compute(self):
    config = t5.T5Config.tiny(dtype=jnp.bfloat16)
    out = _encode(self.params, self.ref["input_ids"], self.mask,
                  config=config)["last_hidden_state"]
    self.assertEqual(out.dtype, jnp.bfloat16)
    # bf16 keeps ~3 significant digits; outputs reach |3.9| (README §12).
    self.assertLessEqual(
        _max_abs(np.asarray(out, np.float32)[self.real],
                 self.ref["last_hidden_state"][self.real]), 0.1)


class T5ConfigTest(absltest.TestCase):

  def test_flan_t5_xl(self):
    config = t5.T5Config.flan_t5_xl()
    self.assertEqual(
        (config.vocab_size, config.d_model, config.num_layers,
         config.num_heads, config.d_kv, config.d_ff),
        (32128, 2048, 24, 32, 64, 5120))
    self.assertEqual(config.inner_dim, 2048)
    self.assertEqual((config.relative_attention_num_buckets,
                      config.relative_attention_max_distance,
                      config.layer_norm_epsilon), (32, 128, 1e-6))
    # ARCHITECTURES B.2: "about 1.22B params"; eval_shape, nothing allocated.
    self.assertEqual(t5.num_params(config), _FLAN_T5_XL_PARAMS)

  def test_config_is_hashable_and_overridable(self):
    self.assertEqual(hash(t5.T5Config.tiny()), hash(t5.T5Config.tiny()))
    self.assertEqual(t5.T5Config.flan_t5_xl(num_layers=2).num_layers, 2)

  def test_rejects_ungated_ffn(self):
    with self.assertRaisesRegex(ValueError, "gated-gelu"):
      t5.T5Config.tiny(feed_forward_proj="relu")


class T5ConverterTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    _, cls.sd = _reference()
    cls.config = t5.T5Config.tiny()
    cls.params = t5_convert.convert_state_dict(cls.sd, cls.config)

  def test_layout(self):
    leaves = jax.tree.leaves(self.params)
    self.assertLen(leaves, 21)  # save_pretrained's 21 tensors (README §9).
    self.assertEqual(sum(x.size for x in leaves), _TINY_PARAMS)
    np.testing.assert_array_equal(self.params["block_1"]["mlp"]["wo"]["kernel"],
                                  self.sd["encoder.block.1.layer.1."
                                          "DenseReluDense.wo.weight"].T)
    np.testing.assert_array_equal(self.params["relative_attention_bias"],
                                  self.sd[_REL_BIAS])

  def test_either_embedding_name(self):
    for drop in ("shared.weight", _EMBED_TOKENS):
      sd = {k: v for k, v in self.sd.items() if k != drop}
      _assert_trees_equal(self, t5_convert.convert_state_dict(sd, self.config),
                          self.params)

  def test_both_embedding_names_must_agree(self):
    sd = dict(self.sd)
    sd[_EMBED_TOKENS] = sd[_EMBED_TOKENS] + 1e-3
    with self.assertRaisesRegex(ValueError, "differ"):
      t5_convert.convert_state_dict(sd, self.config)

  def test_decoder_and_lm_head_are_ignored(self):
    sd = dict(self.sd)
    sd["lm_head.weight"] = np.zeros((512, 64), np.float32)
    sd["decoder.block.0.layer.0.SelfAttention.q.weight"] = np.zeros((3, 3))
    sd["decoder.final_layer_norm.weight"] = np.zeros(7)
    _assert_trees_equal(self, t5_convert.convert_state_dict(sd, self.config),
                        self.params)

  def test_strict_errors_name_every_bad_key(self):
    sd = {k: v for k, v in self.sd.items()
          if k not in ("shared.weight", _EMBED_TOKENS)}
    del sd["encoder.block.1.layer.1.DenseReluDense.wo.weight"]
    # Only block 0 owns a bias table (README §9).
    sd[_REL_BIAS.replace("block.0", "block.1")] = sd[_REL_BIAS]
    sd[_Q0] = np.zeros((64, 65), np.float32)
    with self.assertRaises(strict.ConversionError) as ctx:
      t5_convert.convert_state_dict(sd, self.config)
    err = ctx.exception
    self.assertEqual(err.missing, [
        "encoder.block.1.layer.1.DenseReluDense.wo.weight",
        "shared.weight or encoder.embed_tokens.weight"])
    self.assertEqual(err.unexpected, [_REL_BIAS.replace("block.0", "block.1")])
    self.assertEqual(err.mismatched, [(_Q0, (64, 65), (64, 64))])

  def test_wrong_config_is_rejected(self):
    with self.assertRaises(strict.ConversionError) as ctx:
      t5_convert.convert_state_dict(self.sd,
                                    t5.T5Config.tiny(num_layers=3))
    self.assertIn("encoder.block.2.layer.0.SelfAttention.q.weight",
                  ctx.exception.missing)

  def test_config_from_state_dict_errors(self):
    sd = {k: v for k, v in self.sd.items() if "wi_0" not in k}
    with self.assertRaisesRegex(ValueError, "gated-GELU"):
      t5_convert.config_from_state_dict(sd)
    with self.assertRaisesRegex(ValueError, "relative_attention_bias"):
      t5_convert.config_from_state_dict(
          {k: v for k, v in self.sd.items() if k != _REL_BIAS})


def _spy_safe_open(opened, read):
  """A `safetensors.safe_open` that records opened files and read keys."""
  real = safetensors.safe_open

  class Spy:

    def __init__(self, path, framework):
      opened.append(os.path.basename(path))
      self._file = real(path, framework=framework)

    def __enter__(self):
      self._handle = self._file.__enter__()
      return self

    def __exit__(self, *exc):
      return self._file.__exit__(*exc)

    def keys(self):
      return self._handle.keys()

    def get_tensor(self, key):
      read.append(key)
      return self._handle.get_tensor(key)

  return Spy


class T5SafetensorsTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    _, sd = _reference()
    # As save_pretrained writes a full seq2seq model: `shared.weight` only,
    # plus decoder tensors and an untied lm_head.
    self.sd = {k: v for k, v in sd.items() if k != _EMBED_TOKENS}
    tmp = tempfile.TemporaryDirectory()
    self.addCleanup(tmp.cleanup)
    self.dir = tmp.name
    enc = sorted(self.sd)
    shards = {
        "model-00001-of-00003.safetensors": {k: self.sd[k]
                                             for k in enc[:10]},
        "model-00002-of-00003.safetensors": {
            **{k: self.sd[k] for k in enc[10:]},
            "lm_head.weight": np.ones((512, 64), np.float32),
            "decoder.final_layer_norm.weight": np.ones(64, np.float32)},
    }
    weight_map = {k: f for f, tensors in shards.items() for k in tensors}
    # A shard of decoder tensors only: not even a valid file, so opening it
    # would fail the test.
    weight_map["decoder.block.0.layer.0.SelfAttention.q.weight"] = (
        "model-00003-of-00003.safetensors")
    with open(os.path.join(self.dir, "model-00003-of-00003.safetensors"),
              "wb") as f:
      f.write(b"not a safetensors file")
    for fname, tensors in shards.items():
      safetensors_np.save_file(tensors, os.path.join(self.dir, fname))
    with open(os.path.join(self.dir, t5_convert.INDEX_FILE), "w") as f:
      json.dump({"metadata": {}, "weight_map": weight_map}, f)

  def test_sharded_reads_only_encoder_tensors(self):
    opened, read = [], []
    with mock.patch.object(safetensors, "safe_open",
                           _spy_safe_open(opened, read)):
      sd = t5_convert.load_encoder_state_dict(self.dir)
    self.assertNotIn("model-00003-of-00003.safetensors", opened)
    self.assertCountEqual(read, self.sd)
    self.assertCountEqual(sd, self.sd)
    for k, v in self.sd.items():
      np.testing.assert_array_equal(sd[k], v)

  def test_load_params_infers_config(self):
    params = t5_convert.load_params(
        os.path.join(self.dir, t5_convert.INDEX_FILE))
    _assert_trees_equal(
        self, params,
        t5_convert.convert_state_dict(self.sd, t5.T5Config.tiny()))

  def test_single_bfloat16_file(self):
    bf16 = {k: v.astype(ml_dtypes.bfloat16) for k, v in self.sd.items()}
    with tempfile.TemporaryDirectory() as d:
      safetensors_np.save_file(bf16, os.path.join(d, t5_convert.SINGLE_FILE))
      params = t5_convert.load_params(d, t5.T5Config.tiny())
    want = t5_convert.convert_state_dict(
        {k: v.astype(np.float32) for k, v in bf16.items()}, t5.T5Config.tiny())
    _assert_trees_equal(self, params, want)
    self.assertEqual(params["final_norm"]["scale"].dtype, np.float32)

  def test_missing_shard_and_missing_tensor(self):
    os.remove(os.path.join(self.dir, "model-00002-of-00003.safetensors"))
    with self.assertRaisesRegex(FileNotFoundError, "model-00002-of-00003"):
      t5_convert.load_encoder_state_dict(self.dir)
    index = os.path.join(self.dir, t5_convert.INDEX_FILE)
    with open(index) as f:
      weight_map = json.load(f)["weight_map"]
    weight_map = {k: "model-00001-of-00003.safetensors"
                  for k in weight_map if not k.startswith("decoder.")}
    with open(index, "w") as f:
      json.dump({"weight_map": weight_map}, f)
    with self.assertRaisesRegex(KeyError, "lacks"):
      t5_convert.load_encoder_state_dict(self.dir)
    with self.assertRaisesRegex(FileNotFoundError, "model.safetensors"):
      t5_convert.load_encoder_state_dict(os.path.join(self.dir, "nothing"))


if __name__ == "__main__":
  absltest.main()
