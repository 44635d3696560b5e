"""What a benchmark run records: source digest, speedups, markdown."""

import pathlib
import re
import tempfile

from absl.testing import absltest

from toprovar_jax.bench import results
from toprovar_jax.sampling import sampler as sampler_lib


def _row(plan, transformer_s, **execution):
  ex = dict(vars(sampler_lib.ExecutionConfig(**execution)))
  return dict(plan=plan, execution=ex, transformer_s=transformer_s,
              with_decode_s=transformer_s + 0.01, decode_only_s=0.01,
              compile_s=12.0, tflop=1.5, flop_speedup=2.0)


class SourceDigestTest(absltest.TestCase):

  def test_stable_hex_and_extra_folders_count(self):
    d = results.source_digest()
    self.assertRegex(d, re.compile(r"^[0-9a-f]{12}$"))
    self.assertEqual(d, results.source_digest())
    with tempfile.TemporaryDirectory() as folder:
      (pathlib.Path(folder) / "main.py").write_text("x = 1\n")
      with_main = results.source_digest([pathlib.Path(folder)])
      self.assertNotEqual(with_main, d)
      (pathlib.Path(folder) / "main.py").write_text("x = 2\n")
      self.assertNotEqual(results.source_digest([pathlib.Path(folder)]),
                          with_main)


class SpeedupTest(absltest.TestCase):

  def test_against_dense_with_the_same_execution_else_the_first_dense(self):
    rows = [_row("dense", 0.5), _row("paper", 0.25),
            _row("dense", 0.375, unroll_tokens=256),
            _row("paper", 0.1875, unroll_tokens=256),
            _row("paper", 0.125, kv_read="buffer")]
    results.add_speedups(rows)
    self.assertEqual([r["measured_speedup"] for r in rows],
                     [1.0, 2.0, 1.0, 2.0, 4.0])
    self.assertEqual(rows[3]["speedup_reference"], "dense unroll_tokens=256")
    self.assertEqual(rows[4]["speedup_reference"], "dense")
    alone = [_row("paper", 0.1)]
    results.add_speedups(alone)
    self.assertNotIn("measured_speedup", alone[0])

  def test_markdown_rows_name_plan_and_settings(self):
    rows = [_row("dense", 0.3), _row("paper", 0.15, kv_read="buffer")]
    results.add_speedups(rows)
    text = results.markdown(dict(
        setup=dict(variant="infinity_2b", batch=1, dtype="bfloat16",
                   text_len=512), device="cpu", jax="0.10", date="2026-12-03",
        commit="abc", source_digest="0123", peak_memory_gib=None, plans=rows))
    self.assertIn("| dense | 0.3000 |", text)
    self.assertIn("| paper kv_read=buffer | 0.1500 |", text)
    self.assertIn("peak device memory not reported", text)


if __name__ == "__main__":
  absltest.main()
