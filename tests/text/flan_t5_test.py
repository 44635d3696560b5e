"""A Flan-T5 folder -> prompt features, against transformers' T5 encoder.

Every folder is written here: a T5-style tokenizer.json (t5_tokenizer_test),
a tiny config.json and random weights, saved by transformers itself
(`T5EncoderModel.save_pretrained`) for the equivalence test, or written with
numpy / torch for the format tests.
"""

import json
import pathlib
import tempfile

from absl.testing import absltest
import numpy as np
from safetensors import numpy as safetensors_np

from tests.text import t5_tokenizer_test
from toprovar_jax.text import flan_t5

PROMPTS = t5_tokenizer_test.PROMPTS


def tiny_config(vocab_size: int, d_model: int = 32) -> dict:
  return dict(vocab_size=vocab_size, d_model=d_model, d_kv=8, num_heads=4,
              d_ff=64, num_layers=2, relative_attention_num_buckets=32,
              relative_attention_max_distance=128, layer_norm_epsilon=1e-6,
              feed_forward_proj="gated-gelu", model_type="t5")


def random_state_dict(config: dict, seed: int = 0) -> dict:
  """HF encoder tensors (out, in) of `config`, N(0, 0.5²/fan_in)-ish."""
  rng = np.random.default_rng(seed)
  c, inner, f = config["d_model"], config["num_heads"] * config["d_kv"], (
      config["d_ff"])
  normal = lambda *shape, s=1.0: (rng.normal(0, s, shape)).astype(np.float32)
  sd = {"shared.weight": normal(config["vocab_size"], c),
        "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight":
            normal(config["relative_attention_num_buckets"],
                   config["num_heads"], s=0.5),
        "encoder.final_layer_norm.weight": 1 + normal(c, s=0.1)}
  for i in range(config["num_layers"]):
    a, m = f"encoder.block.{i}.layer.0", f"encoder.block.{i}.layer.1"
    for n in "qkv":
      sd[f"{a}.SelfAttention.{n}.weight"] = normal(inner, c, s=c ** -0.5)
    sd[f"{a}.SelfAttention.o.weight"] = normal(c, inner, s=inner ** -0.5)
    sd[f"{a}.layer_norm.weight"] = 1 + normal(c, s=0.1)
    sd[f"{m}.DenseReluDense.wi_0.weight"] = normal(f, c, s=c ** -0.5)
    sd[f"{m}.DenseReluDense.wi_1.weight"] = normal(f, c, s=c ** -0.5)
    sd[f"{m}.DenseReluDense.wo.weight"] = normal(c, f, s=f ** -0.5)
    sd[f"{m}.layer_norm.weight"] = 1 + normal(c, s=0.1)
  return sd


def write_folder(folder, *, d_model: int = 32, weights: str = "safetensors",
                 seed: int = 0) -> pathlib.Path:
  """A synthetic Flan-T5 folder: tokenizer.json, config.json, weights
  ('safetensors' or 'bin', the latter with a decoder tensor to ignore)."""
  folder = pathlib.Path(folder)
  vocab = t5_tokenizer_test.write_tokenizer_json(folder)
  config = tiny_config(vocab, d_model)
  (folder / "config.json").write_text(json.dumps(config))
  sd = random_state_dict(config, seed)
  if weights == "safetensors":
    safetensors_np.save_file(sd, str(folder / "model.safetensors"))
  else:
    import torch  # pylint: disable=g-import-not-at-top
    tensors = {k: torch.from_numpy(v) for k, v in sd.items()}
    tensors["decoder.final_layer_norm.weight"] = torch.ones(d_model)
    torch.save(tensors, str(folder / "pytorch_model.bin"))
  return folder


class FlanT5Test(absltest.TestCase):

  def test_matches_transformers(self):
    # The official encode_prompt: AutoTokenizer(legacy=True), padding to
    # max_length=512, T5EncoderModel last_hidden_state, rows of real tokens.
    import torch  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top
    folder = pathlib.Path(tempfile.mkdtemp())
    vocab = t5_tokenizer_test.write_tokenizer_json(folder)
    cfg = tiny_config(vocab)
    del cfg["model_type"]
    torch.manual_seed(0)
    hf_model = transformers.T5EncoderModel(transformers.T5Config(
        dropout_rate=0.0, pad_token_id=0, eos_token_id=1, **cfg)).eval()
    with torch.no_grad():  # the init's 1.0 norms hide norm-layout mistakes
      for name, p in hf_model.named_parameters():
        p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator()
                                 .manual_seed(len(name))))
    hf_model.save_pretrained(str(folder))
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(folder),
                                                        legacy=True)
    tokens = hf_tok(text=list(PROMPTS), max_length=512, padding="max_length",
                    truncation=True, return_tensors="pt")
    with torch.no_grad():
      want = hf_model(input_ids=tokens.input_ids,
                      attention_mask=tokens.attention_mask
                      ).last_hidden_state.numpy()
    lens = tokens.attention_mask.sum(-1).tolist()

    encoder = flan_t5.FlanT5TextEncoder.from_folder(folder)
    feats, counts = encoder.encode(PROMPTS)
    self.assertEqual(encoder.name, f"flan-t5:{folder.name}")
    self.assertEqual([len(f) for f in feats], lens)
    self.assertEqual(counts, lens)
    for i, f in enumerate(feats):
      np.testing.assert_allclose(f, want[i, :lens[i]], atol=1e-4, rtol=0)

  def test_cache_truncation_and_bin_weights(self):
    st = write_folder(tempfile.mkdtemp())
    pt = write_folder(tempfile.mkdtemp(), weights="bin")
    a = flan_t5.FlanT5TextEncoder.from_folder(st)
    b = flan_t5.FlanT5TextEncoder.from_folder(pt)
    prompts = ["a red fox in snow", "a", "a red fox in snow"]
    fa, ca = a.encode(prompts)
    fb, _ = b.encode(prompts)
    for x, y in zip(fa, fb):  # same seed, two weight formats
      np.testing.assert_array_equal(x, y)
    self.assertEqual((a.encoded, ca), (2, [6, 2, 6]))
    np.testing.assert_array_equal(fa[0], fa[2])
    a.encode(["a"])
    self.assertEqual(a.encoded, 2)  # cached
    # The cap: 4 rows (3 pieces + </s>), the count before truncation.
    cut, counts = a.encode(["a red fox in snow"], max_tokens=4)
    self.assertEqual((cut[0].shape, counts), ((4, 32), [6]))
    self.assertFalse(np.allclose(cut[0][:3], fa[0][:3]))  # its own run

  def test_bad_folders_are_named(self):
    empty = tempfile.mkdtemp()
    with self.assertRaisesRegex(FileNotFoundError,
                                r"^t5_dir: .* has no config.json"):
      flan_t5.FlanT5TextEncoder.from_folder(empty)
    folder = write_folder(tempfile.mkdtemp())
    (folder / "model.safetensors").unlink()
    with self.assertRaisesRegex(FileNotFoundError,
                                r"^t5_dir: .* holds no model.safetensors"):
      flan_t5.FlanT5TextEncoder.from_folder(folder)
    with self.assertRaisesRegex(FileNotFoundError, r"is not a folder"):
      flan_t5.FlanT5TextEncoder.from_folder(folder / "nope")


if __name__ == "__main__":
  absltest.main()
