"""Joint training: the fused cross-entropy, and `joint_star` with unimodal losses.

The baselines of every table (docs/methods.md §Setting): no balancing transform, plain
SGD-momentum on L = CE(fused) (+ sum_m CE(head_m(z_m)) for the "*" variant).
"""

from redreg_jax.methods.spec import MULTIMODAL_CE, UNIMODAL_CE, Method, MethodSpec, register


def build(setup) -> Method:
  """Joint training needs no hyper-parameters beyond the shared SGD ones."""
  star = (UNIMODAL_CE,) if setup.spec.unimodal_heads else ()
  return Method(setup.name, losses=(MULTIMODAL_CE,) + star)


register(MethodSpec("joint", "one multimodal cross-entropy", build))
register(MethodSpec("joint_star", "plus one unimodal cross-entropy per modality "
                    "(unimodal heads)", build, unimodal_heads=True))
