"""Small plans for the sparsity tests: a 4-layer, 3-scale model (N_s = 1,
4, 16) keeps hand computations short."""

from toprovar_jax.models import config as config_lib
from toprovar_jax.sparsity import named
from toprovar_jax.sparsity import plan as plan_lib

# A 4-layer model with 3 scales (N_s = 1, 4, 16) keeps hand computations short.
CFG = config_lib.replace(
    config_lib.get_variant("infinity_tiny"), name="plan_test", depth=4,
    schedule=config_lib.square_schedule((1, 2, 4)))
INFINITY_2B = config_lib.get_variant("infinity_2b")

F4 = "FFFF"


def scale(keep, layers=F4, **kw) -> plan_lib.ScalePlan:
  return plan_lib.ScalePlan(keep=keep, layers=layers, **kw)


def plan(*scales, exit_scale=None, **kw) -> plan_lib.SparsityPlan:
  """A plan for _CFG; missing scales are dense."""
  n = (1, 4, 16)
  num = 3 if exit_scale is None else exit_scale
  full = list(scales) + [scale(n[s]) for s in range(len(scales), num)]
  args = dict(name="p", schedule=((1, 1), (2, 2), (4, 4)), num_layers=4,
              exit_scale=exit_scale, scales=tuple(full))
  args.update(kw)
  return plan_lib.SparsityPlan(**args)


# An entropy-pruned scale 2 (N_2 = 16), valid on its own.
ENTROPY_2 = dict(keep=8, layers="FFSS", probe_layer=1, scorer="entropy")


def paper_plan() -> plan_lib.SparsityPlan:
  return named.load_plan("infinity_2b_paper", INFINITY_2B)
