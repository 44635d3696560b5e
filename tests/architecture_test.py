"""The package's layout rules (docs/ARCHITECTURE.md), read from the sources.

  * Metrics judge outputs: they import no sampler, pipeline, training or
    model code. Models are pure (no weights, I/O or sampling imports); the
    sparsity and weights wings sit below the sampler.
  * The top layers (pipeline, report, bench, evaluation) are imported by
    experiments only, never by the library below them.
  * The library reaches no data outside the package: no path is climbed
    out of it from `__file__` (`parents[...]`, `.parent.parent`, nested
    `os.path.dirname`), and nothing imports experiments/, configs/ or tests/.
  * Every library module has its test module mirrored under tests/.
  * Modules stay small.
"""

import ast
import pathlib

from absl.testing import absltest

import toprovar_jax

_PACKAGE = pathlib.Path(toprovar_jax.__file__).resolve().parent
_TESTS = pathlib.Path(__file__).resolve().parent
# Which wings of toprovar_jax a wing may import (besides itself); None = any.
_ALLOWED = {
    "metrics": {"io"},
    "models": {"ops"},
    "ops": set(),
    "sparsity": {"models.config", "ops"},
    "weights": {"io", "models"},
    "io": set(),
}
_TOP_LAYERS = ("pipeline", "report", "bench", "evaluation")
# issue 10: modules of at most ~500 lines, experiment mains of ~100.
_MAX_LINES = 520
_MAX_MAIN_LINES = 135  # train.py / train_emoji.py (issue 12's lane): 124-132


def _modules():
  """(dotted name below toprovar_jax, path) of every library module."""
  for path in sorted(_PACKAGE.rglob("*.py")):
    parts = path.relative_to(_PACKAGE).with_suffix("").parts
    if parts[-1] == "__init__":
      parts = parts[:-1]
    yield ".".join(parts), path


def _imports(path):
  """Dotted names below toprovar_jax that a module imports (any depth)."""
  out = set()
  for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
    if isinstance(node, ast.ImportFrom) and node.module:
      if node.module == "toprovar_jax":
        out.update(a.name for a in node.names)
      elif node.module.startswith("toprovar_jax."):
        base = node.module[len("toprovar_jax."):]
        for a in node.names:
          sub = _PACKAGE.joinpath(*base.split("."), a.name)
          is_module = sub.with_suffix(".py").exists() or sub.is_dir()
          out.add(f"{base}.{a.name}" if is_module else base)
    elif isinstance(node, ast.Import):
      out.update(a.name[len("toprovar_jax."):] for a in node.names
                 if a.name.startswith("toprovar_jax."))
  return out


def _top_imports(path):
  """First components of every module a file imports (any depth)."""
  out = set()
  for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
    if isinstance(node, ast.ImportFrom) and node.module and not node.level:
      out.add(node.module.split(".")[0])
    elif isinstance(node, ast.Import):
      out.update(a.name.split(".")[0] for a in node.names)
  return out


def _allowed(dep: str, allowed) -> bool:
  return any(dep == a or dep.startswith(a + ".") for a in allowed)


class ImportRulesTest(absltest.TestCase):

  def test_wings_import_only_what_they_may(self):
    bad = []
    for name, path in _modules():
      wing = name.split(".")[0]
      if wing not in _ALLOWED:
        continue
      for dep in sorted(_imports(path)):
        if dep.split(".")[0] != wing and not _allowed(dep, _ALLOWED[wing]):
          bad.append(f"{name} imports {dep}")
    self.assertEqual(bad, [])

  def test_metrics_import_no_sampler_pipeline_or_training(self):
    for name, path in _modules():
      if name.startswith("metrics"):
        for dep in _imports(path):
          self.assertFalse(dep.startswith(("sampling", "pipeline", "training",
                                           "evaluation", "models")),
                           f"{name} imports {dep}")

  def test_top_layers_are_not_imported_by_the_library(self):
    bad = []
    for name, path in _modules():
      for dep in _imports(path):
        top = dep.split(".")[0]
        if top in _TOP_LAYERS and name.split(".")[0] != top:
          bad.append(f"{name} imports {dep}")
    # report may use the runner's records; nothing may use report.
    self.assertEqual(bad, [])

  def test_no_imports_of_experiments_configs_or_tests(self):
    for name, path in _modules():
      self.assertEmpty(_top_imports(path) & {"experiments", "configs",
                                             "tests"}, name)


class NoDataOutsideThePackageTest(absltest.TestCase):

  def test_no_path_climbs_out_of_the_package(self):
    bad = []
    for name, path in _modules():
      for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        where = f"{name}:{getattr(node, 'lineno', '?')}"
        if (isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "parents"):
          bad.append(f"{where} parents[...]")
        if (isinstance(node, ast.Attribute) and node.attr == "parent"
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "parent"):
          bad.append(f"{where} .parent.parent")
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "dirname" and node.args
            and isinstance(node.args[0], ast.Call)
            and isinstance(node.args[0].func, ast.Attribute)
            and node.args[0].func.attr == "dirname"):
          bad.append(f"{where} dirname(dirname(...))")
    self.assertEqual(bad, [])

  def test_named_plans_ship_with_the_package(self):
    plans = _PACKAGE / "sparsity" / "plans"
    self.assertNotEmpty(list(plans.glob("*.json")))
    setup = (_TESTS.parent / "setup.cfg").read_text(encoding="utf-8")
    self.assertIn("sparsity/plans/*.json", setup)


class LayoutTest(absltest.TestCase):

  def test_every_library_module_has_a_mirrored_test(self):
    missing = []
    for name, path in _modules():
      if path.name == "__init__.py":
        continue
      parts = name.split(".")
      test = _TESTS.joinpath(*parts[:-1], f"{parts[-1]}_test.py")
      if not test.is_file():
        missing.append(str(test.relative_to(_TESTS.parent)))
    self.assertEqual(missing, [])

  def test_modules_stay_small(self):
    big = {}
    for name, path in _modules():
      rel = str(path.relative_to(_PACKAGE))
      n = len(path.read_text(encoding="utf-8").splitlines())
      if n > _MAX_LINES:
        big[rel] = n
    self.assertEqual(big, {})
    mains = {p.name: len(p.read_text(encoding="utf-8").splitlines())
             for p in (_TESTS.parent / "experiments").glob("*.py")}
    self.assertEqual({k: v for k, v in mains.items() if v > _MAX_MAIN_LINES},
                     {})


if __name__ == "__main__":
  absltest.main()
