"""The FDRL paper's image hyper-parameters (Appendix E.1), shared by the image-data configs.

Not a runnable config itself: cifar10.py, celeba64.py, lsun_church128.py, cat2dog.py and
mnist.py start from ``get_config()`` here and set their data and estimator.
"""

from fdrl_jax.configs import default


def get_config():
  config = default.get_config()
  config.data.batch_size = 64
  config.data.dequantization = 0.03
  config.data.random_flip = True
  config.data.max_fit_samples = 60_000  # the paper fits the prior on the whole training split
  config.loss.name = "lsif"             # LSIF-χ², the paper's best variant in Table 2
  config.loss.divergence = "pearson"
  config.flow.num_steps = 100           # K
  config.flow.num_refine_steps = 20     # κ for the data-dependent prior
  config.flow.step_size = 3.0           # η
  config.flow.noise_scale = 1e-2        # ν
  config.flow.clip = True
  config.prior.name = "gaussian"
  config.optim.learning_rate = 1e-4
  config.optim.decay_steps = (80_000, 90_000)
  config.optim.ema_decay = 0.998
  config.eval.metric = "fid"            # --config.eval.inception_weights: docs/guide/evaluation.md
  config.eval.num_samples = 50_000      # the paper's protocol (App. E.1, the reference's
  config.eval.num_reference = 0         # eval_ddp.py): 50 000 samples, the whole training split;
                                        # --config.eval.fast=True for a quick, biased FID
  config.training.num_steps = 100_000
  config.training.log_every = 100
  config.training.checkpoint_every = 5_000
  config.training.sample_every = 5_000
  return config
