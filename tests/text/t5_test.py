"""The Flax T5 encoder and its converter against the tiny golden file.

Golden data: `t5_tiny_reference.npz` in `testing.reference_dir()` (README
§9-§12): HF transformers' `T5EncoderModel` with a Flan-T5-style config and
random weights. Tolerances are README §12: table look-ups exact, hidden
states 1e-4 (not above 2e-4: the erf-vs-tanh GELU mistake is 6.4e-4).
"""

from unittest import mock

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np

from toprovar_jax import testing
from toprovar_jax.convert import common
from toprovar_jax.convert import t5 as t5_convert
from toprovar_jax.text import t5

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


if __name__ == "__main__":
  absltest.main()
