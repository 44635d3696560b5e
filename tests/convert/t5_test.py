"""The Flan-T5 encoder converter and its safetensors reader."""

import json
import os
import tempfile
from unittest import mock

from absl.testing import absltest
import jax
import ml_dtypes
import numpy as np
import safetensors
from safetensors import numpy as safetensors_np

from tests.text import t5_test as fixtures
from toprovar_jax.convert import t5 as t5_convert
from toprovar_jax.text import t5
from toprovar_jax.weights import strict

_EMBED_TOKENS = fixtures._EMBED_TOKENS
_Q0 = fixtures._Q0
_REL_BIAS = fixtures._REL_BIAS
_TINY_PARAMS = fixtures._TINY_PARAMS
_assert_trees_equal = fixtures._assert_trees_equal
_reference = fixtures._reference


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
