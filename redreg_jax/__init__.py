"""redreg_jax: balanced multimodal learning in JAX/Flax.

Every balancing method is an `optax.GradientTransformationExtraArgs` fed the same
per-step `Observations`; chain it ahead of weight decay and SGD-momentum:

  tx = optax.chain(redreg_transform(('audio', 'visual'), labels, num_epochs=80),
                   optax.add_decayed_weights(1e-4), optax.sgd(0.002, momentum=0.9))
  updates, opt_state = tx.update(grads, opt_state, params, observations=obs)
"""

from redreg_jax import integrate
from redreg_jax import redreg_signals
from redreg_jax.inforeg import INFOREG_PRESETS, InfoRegState, inforeg_transform
from redreg_jax.mmpareto import MMParetoState, mmpareto_transform, per_loss_grads
from redreg_jax.observations import Observations, branch_true_class_prob, true_class_probs
from redreg_jax.ogm import OgmState, ogm_ge_transform
from redreg_jax.redreg import RedRegState, redreg_transform

__version__ = "0.1.0"
