"""The Flan-T5 folder tokenizer: tokenizer.json and spiece.model readers.

The folders are written by the tests: a T5-style `tokenizer.json` (Unigram
pieces, Metaspace, `$A </s>` post-processor) built with `tokenizers` from a
tiny vocabulary, and a `spiece.model` trained by sentencepiece on a few
sentences. Both are checked against transformers' own T5 tokenizers (what
the official `run_infinity.py` calls) and against T5's rules.
"""

import json
import pathlib
import tempfile

from absl.testing import absltest
import numpy as np

from toprovar_jax.text import t5_tokenizer

# Pieces of the tiny Unigram vocabulary after <pad>, </s>, <unk>, "▁".
_PIECES = ("▁a", "▁red", "▁fox", "▁in", "▁snow", "▁the", "▁light", "house",
           "s", ",", "e", "o", "r", "d", "a", "f", "x", "n", "l", "i", "g",
           "h", "t", "u", "c", "w", "▁s", "now")
PROMPTS = ("a red fox in snow", "  the lighthouses,  in snow ", "a",
           "the red fox, the snow: 🦊 über", "")


def write_tokenizer_json(folder) -> int:
  """Writes a T5-style tokenizer.json (+ tokenizer_config.json); returns
  the vocabulary size."""
  # pylint: disable-next=g-import-not-at-top
  from tokenizers import Regex, Tokenizer, decoders, models, normalizers
  from tokenizers import pre_tokenizers, processors  # pylint: disable=g-import-not-at-top
  vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
  vocab += [(p, -3.0 - 0.1 * i) for i, p in enumerate(_PIECES)]
  tok = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
  tok.normalizer = normalizers.Sequence(
      [normalizers.Replace(Regex(" {2,}"), " ")])
  # As google/flan-t5-*'s tokenizer.json: split on whitespace, then
  # Metaspace (so runs of spaces and trailing spaces make no piece).
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.WhitespaceSplit(),
      pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")])
  tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
  tok.post_processor = processors.TemplateProcessing(
      single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
  # The official files fix their own padding / truncation; the reader must
  # switch them off (reference README §7, "Trap 1").
  tok.enable_padding(length=16, pad_id=0, pad_token="<pad>")
  tok.enable_truncation(max_length=4)
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  tok.save(str(folder / t5_tokenizer.TOKENIZER_JSON))
  (folder / "tokenizer_config.json").write_text(json.dumps(dict(
      eos_token="</s>", pad_token="<pad>", unk_token="<unk>", extra_ids=0,
      model_max_length=512, tokenizer_class="T5Tokenizer")))
  return len(vocab)


def write_spiece_model(folder) -> None:
  import sentencepiece  # pylint: disable=g-import-not-at-top
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  text = ["a red fox sits in the fresh snow", "the lighthouse on the coast",
          "an astronaut rides a horse", "a bowl of ramen with an egg"] * 8
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(text),
      model_prefix=str(folder / "spiece"), vocab_size=36, model_type="unigram",
      pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)


class TokenizerJsonTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.dir = tempfile.mkdtemp()
    write_tokenizer_json(cls.dir)
    cls.tok = t5_tokenizer.T5Tokenizer(cls.dir)

  def test_t5_rules(self):
    out = self.tok.tokenize(["a red fox in snow", "a"])
    # Metaspace pieces, then </s> = 1; pad 0 on the right.
    np.testing.assert_array_equal(out.ids, [[4, 5, 6, 7, 8, 1],
                                            [4, 1, 0, 0, 0, 0]])
    np.testing.assert_array_equal(out.mask, [[1] * 6, [1, 1, 0, 0, 0, 0]])
    self.assertEqual(out.counts, (6, 2))
    self.assertEqual(self.tok.tokenize([""]).ids.tolist(), [[1]])

  def test_cap_keeps_the_end_token(self):
    out = self.tok.tokenize(["a red fox in snow"], max_tokens=4)
    np.testing.assert_array_equal(out.ids, [[4, 5, 6, 1]])
    self.assertEqual(out.counts, (6,))

  def test_matches_transformers(self):
    import transformers  # pylint: disable=g-import-not-at-top
    hf = transformers.AutoTokenizer.from_pretrained(self.dir, legacy=True)
    for cap in (512, 5):
      ours = self.tok.tokenize(PROMPTS, max_tokens=cap)
      for i, p in enumerate(PROMPTS):
        want = hf(text=[p], max_length=cap, truncation=True).input_ids[0]
        got = ours.ids[i, :ours.mask[i].sum()].tolist()
        self.assertEqual(got, want, (p, cap))

  def test_missing_files_name_the_folder(self):
    empty = tempfile.mkdtemp()
    with self.assertRaisesRegex(FileNotFoundError,
                                "t5_dir: .* holds neither tokenizer.json "
                                "nor spiece.model"):
      t5_tokenizer.T5Tokenizer(empty)


class SpieceTest(absltest.TestCase):

  def test_t5_rules(self):
    # transformers 5 builds its T5Tokenizer from spiece.model with its own
    # pipeline (no oracle here); the rules of T5Tokenizer(legacy=True) are
    # sentencepiece's pieces, then </s>, cut keeping </s>.
    import sentencepiece  # pylint: disable=g-import-not-at-top
    folder = pathlib.Path(tempfile.mkdtemp())
    write_spiece_model(folder)
    ours = t5_tokenizer.T5Tokenizer(folder)
    self.assertTrue(ours.source.endswith("spiece.model"))
    sp = sentencepiece.SentencePieceProcessor(
        model_file=str(folder / "spiece.model"))
    prompts = ("a red fox in the snow", "lighthouse on the coast", "a")
    out = ours.tokenize(prompts, max_tokens=6)
    for i, p in enumerate(prompts):
      pieces = sp.encode(p)
      self.assertNotIn(t5_tokenizer.EOS_ID, pieces)
      want = (pieces + [1]) if len(pieces) < 6 else pieces[:5] + [1]
      self.assertEqual(out.ids[i, :out.mask[i].sum()].tolist(), want, p)
      self.assertEqual(out.counts[i], len(pieces) + 1)
      self.assertEqual(sp.decode(pieces), p)
    self.assertGreater(out.counts[0], 6)  # The cap was exercised.


if __name__ == "__main__":
  absltest.main()
