"""Compile-time studies: a plan's generation program on abstract weights,
and chains of unrolled blocks as one or several programs."""

from absl.testing import absltest
import jax

from toprovar_jax import testing
from toprovar_jax.bench import compile_time
from toprovar_jax.bench import latency
from toprovar_jax.sampling import sampler as sampler_lib


class CompileOnlyTest(absltest.TestCase):

  def test_compiles_on_abstract_weights(self):
    setup = latency.BenchSetup(variant="var_tiny", dtype="float32")
    cfg, tok, params, vparams, _ = latency.init_model(setup, abstract=True)
    self.assertIsInstance(jax.tree.leaves(params)[0], jax.ShapeDtypeStruct)
    cond = latency.conditioning(cfg, setup)
    plan = latency.resolve_plan("dense", cfg)
    row = compile_time.compile_plan(
        cfg, tok, params, vparams, cond, setup, plan,
        execution=sampler_lib.ExecutionConfig(unroll_tokens=4))
    self.assertEqual((row["plan"], row["backend"],
                      row["execution"]["unroll_tokens"]),
                     ("dense", jax.default_backend(), 4))
    self.assertGreater(row["compile_s"], 0.0)
    self.assertGreater(row["lower_s"], 0.0)


class CompileBlockChainTest(absltest.TestCase):

  def test_every_block_is_compiled_in_one_or_several_programs(self):
    cfg = testing.micro_infinity()
    kw = dict(tokens=8, text_len=8, dtype="float32")
    one = compile_time.compile_block_chain(cfg, 1, **kw)
    whole = compile_time.compile_block_chain(cfg, 4, **kw)
    split = compile_time.compile_block_chain(cfg, 4, programs=2, **kw)
    # Per block: qkv, SA proj, CA q, CA proj, fc1, fc2 and two products in
    # each of the two XLA attentions.
    self.assertEqual(one["dot_generals"], 10)
    self.assertEqual(whole["dot_generals"], 4 * one["dot_generals"])
    self.assertEqual(split["dot_generals"], whole["dot_generals"])
    self.assertEqual((split["layers"], split["programs"]), (4, 2))
    self.assertGreater(split["compile_s"], 0.0)

  def test_split_must_divide_the_layers(self):
    with self.assertRaisesRegex(ValueError, r"layers \(6\) must be a "
                                r"positive multiple of programs \(4\)"):
      compile_time.compile_block_chain(testing.micro_var(), 6, programs=4)


if __name__ == "__main__":
  absltest.main()
