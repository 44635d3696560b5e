"""The one variant table: lookups, derived sizes, the RoPE grid rule."""

from absl.testing import absltest

from toprovar_jax.models import config as config_lib


class VariantTableTest(absltest.TestCase):

  def test_lookups_and_errors(self):
    self.assertEqual(config_lib.get_variant("var_d16").width, 1024)
    with self.assertRaisesRegex(ValueError, r"model.variant: unknown variant "
                                r"'var_d17'; known: \[.*'var_d16'"):
      config_lib.get_variant("var_d17")
    # VAR sizes share the 256-px VQVAE; d36 has its own (512 px).
    self.assertIs(config_lib.get_tokenizer("var_d20"),
                  config_lib.TOKENIZERS["var"])
    self.assertEqual(config_lib.get_tokenizer("var_d36").patch_nums[-1], 32)
    for name, cfg in config_lib.VARIANTS.items():
      self.assertEqual(cfg.name, name)
      config_lib.get_tokenizer(name)  # every variant has a tokenizer

  def test_derived_sizes(self):
    cfg = config_lib.get_variant("var_tiny")
    self.assertEqual(cfg.scale_offsets[:4], (0, 1, 5, 14))
    self.assertEqual(cfg.seq_len, sum(p * p for p in
                                      config_lib.VAR_PATCH_NUMS_256))
    self.assertEqual(cfg.head_out, 256)
    inf = config_lib.get_variant("infinity_2b")
    self.assertEqual((inf.head_dim, inf.head_out, inf.pool_num_heads),
                     (128, 64, 16))
    self.assertEqual(config_lib.infinity_mlp_hidden(2048), 8192)

  def test_vae_grid_with_patchify(self):
    self.assertEqual(config_lib.vae_grid(config_lib.get_variant("infinity_2b")),
                     (64, 64))
    # 8B: 2x2 patchify, so the VAE's grid is twice the token grid.
    eight = config_lib.get_variant("infinity_8b")
    self.assertEqual(config_lib.vae_grid(eight), (128, 128))
    self.assertEqual(config_lib.vae_grid(eight, 1), (4, 4))

  def test_rope_grid_of_a_template_prefix(self):
    self.assertEqual(config_lib.infinity_rope_grid(((1, 1), (2, 2), (4, 3))),
                     (72, 54))
    self.assertEqual(config_lib.infinity_rope_grid(((1, 1), (2, 2), (3, 4))),
                     (54, 72))  # the transposed template
    with self.assertRaisesRegex(ValueError, "not a prefix"):
      config_lib.infinity_rope_grid(((1, 1), (3, 3)))

  def test_official_templates_and_budgets(self):
    templates = config_lib.infinity_templates()
    self.assertLen(templates, 15)  # 1:1, 7 ratios and their transposes
    self.assertEqual(list(templates)[:7],
                     [0.333, 0.4, 0.5, 0.571, 0.666, 0.75, 0.8])
    for ratio, tpl in templates.items():
      h, w = tpl[-1]
      self.assertAlmostEqual(h / w, ratio, delta=0.01)  # official assert
      for pixels, n in config_lib.INFINITY_BUDGETS.items():
        schedule, grid = config_lib.infinity_schedule(ratio, pixels)
        self.assertLen(schedule, n)
        self.assertEqual(grid, tpl[-1])
        self.assertEqual(config_lib.infinity_rope_grid(schedule), tpl[-1])
    schedule, grid = config_lib.infinity_schedule(1.5, "0.25M")
    self.assertEqual(schedule[-1], (39, 26))  # 624 x 416 px at stride 16
    self.assertEqual(grid, (78, 52))
    self.assertEqual(config_lib.infinity_schedule(2 / 3, "0.06M")[0][-1],
                     (14, 21))
    # The golden files' schedule is 1:1 at 0.06M.
    tiny = config_lib.get_variant("infinity_tiny")
    self.assertEqual(config_lib.at_resolution(tiny, 1.0, "0.06M"), tiny)
    self.assertEqual(config_lib.describe_schedule(tiny.schedule),
                     "h/w 1 at 0.06M (7 scales, last 16x16)")

  def test_bad_resolutions_are_named(self):
    with self.assertRaisesRegex(ValueError, r"^model.pixels: '0.5M' is not "
                                r"an official budget; known: \['0.06M'"):
      config_lib.infinity_schedule(1.0, "0.5M")
    with self.assertRaisesRegex(ValueError, r"^model.h_div_w: 1.1 is not an "
                                r"official h/w template; known: \[0.333"):
      config_lib.infinity_schedule(1.1, "1M")
    with self.assertRaisesRegex(ValueError, "^model.pixels: var_d16 is a VAR"):
      config_lib.at_resolution(config_lib.get_variant("var_d16"), 1.0, "1M")

  def test_bad_configs_are_named(self):
    with self.assertRaisesRegex(ValueError, "TransformerConfig.width"):
      config_lib.replace(config_lib.get_variant("var_tiny"), num_heads=3)


if __name__ == "__main__":
  absltest.main()
