"""`convert.manifest`: the official keys derived from our converters equal
the keys of the official code's golden weights; `check` lists every bad key;
the third_party manifests agree with the architecture."""

import json
import pathlib

from absl.testing import absltest
import numpy as np

from experiments import make_manifests
from toprovar_jax import parity
from toprovar_jax import testing
from toprovar_jax.convert import manifest
from toprovar_jax.weights import strict

_THIRD_PARTY = pathlib.Path(__file__).resolve().parents[2] / "third_party"


def _reference(name):
  _, arrays, meta = parity.load(testing.reference_dir() / f"{name}.npz")
  return arrays, meta


def _strip(arrays, prefix):
  return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


class ManifestTest(absltest.TestCase):

  def test_expected_keys_are_the_golden_files_keys(self):
    # The golden files hold the official code's own state dicts.
    for name, prefix, kinds in (("var_tiny", "var/", ("transformer", "vqvae")),
                                ("infinity_tiny", "infinity/",
                                 ("transformer", "bsq"))):
      arrays, meta = _reference(name)
      configs = (parity.var_configs(meta) if name == "var_tiny"
                 else parity.infinity_configs(meta))
      for kind, cfg, pre in zip(kinds, configs, (prefix, "vae/")):
        target = manifest.Target(kind, cfg, name)
        sd = _strip(arrays, pre)
        total = manifest.check(sd, target)
        depth = cfg.depth if kind == "transformer" else 0
        names = manifest.canonical(sd, depth) if depth else {k: k for k in sd}
        params = {names[k]: v.shape for k, v in sd.items()
                  if not manifest._is_buffer(kind, names[k])}  # pylint: disable=protected-access
        self.assertEqual(params, manifest.expected(target), (name, kind))
        self.assertEqual(total, sum(int(np.prod(s)) for s in params.values()))
    # README §2: the tiny Infinity has 3,110,180 + 2,154,995 parameters.
    self.assertEqual(manifest.total(manifest.expected(manifest.Target(
        "transformer", configs[0], ""))), 3_110_180)
    self.assertEqual(manifest.total(manifest.expected(manifest.Target(
        "bsq", configs[1], ""))), 2_154_995)

  def test_check_lists_missing_unexpected_and_misshaped(self):
    arrays, meta = _reference("var_tiny")
    target = manifest.Target("transformer", parity.var_configs(meta)[0], "t")
    sd = _strip(arrays, "var/")
    del sd["head.bias"]
    sd["blocks.5.ffn.fc1.weight"] = np.zeros(3)
    sd["word_embed.weight"] = np.zeros((2, 2))
    with self.assertRaises(strict.ConversionError) as e:
      manifest.check(sd, target)
    self.assertEqual(e.exception.missing, ["head.bias"])
    self.assertEqual(e.exception.unexpected, ["blocks.5.ffn.fc1.weight"])
    self.assertEqual([m[0] for m in e.exception.mismatched],
                     ["word_embed.weight"])
    self.assertIn("missing keys (1): head.bias", str(e.exception))

  def test_third_party_manifests_agree_with_the_architecture(self):
    files = {f: (p, t) for p, f, t, _ in make_manifests.official_files()}
    self.assertLen(list(_THIRD_PARTY.glob("*/manifests/*.json")), len(files))
    # The cheap ones are re-derived here; all were written by the script.
    for file in ("var_d16.pth", "vae_ch160v4096z32.pth"):
      project, target = files[file]
      record = json.loads((_THIRD_PARTY / project / "manifests" /
                           f"{file}.json").read_text())
      self.assertEqual(manifest.compare_json(record, target), (), file)
    record = json.loads((_THIRD_PARTY / "var" / "manifests" /
                         "var_d16.pth.json").read_text())
    self.assertEqual(record["parameters"], 310_283_520)  # VAR-d16: 310.3M
    t5 = json.loads((_THIRD_PARTY / "flan_t5" / "manifests" /
                     "flan-t5-xl.json").read_text())
    self.assertEqual(t5["parameters"], 1_223_527_424)  # ARCHITECTURES B.2


if __name__ == "__main__":
  absltest.main()
