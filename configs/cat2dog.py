"""Cat → dog translation (Sec. 6.5): the prior is the cat images, the data the dog images.

Layout of DIR (the Cat2dog set of the DRIT paper): trainA/ (cats), trainB/ (dogs), testA/, testB/.
Preprocessing: resize 84, centre crop 64. Shallow ResNet64 with spectral norm and self-attention;
40 000 steps, learning rate × 0.1 at 20 000 and 30 000, K = 100 for training, 110 for sampling.
  python -m fdrl_jax.main --config=configs/cat2dog.py --workdir=runs/cat2dog \
      --config.data.path=DIR/trainB --config.data.test_path=DIR/testB \
      --config.prior.source_path=DIR/trainA
Then translate given cats (a folder or an .npz):
  python -m fdrl_jax.main --config=configs/cat2dog.py --workdir=runs/cat2dog --mode=translate \
      --input=DIR/testA --output=runs/cat2dog/dogs
"""

from fdrl_jax.configs import paper


def get_config():
  config = paper.get_config()
  config.data.name = "folder"
  config.data.image_size = 64
  config.data.resize_first = 84
  config.data.center_crop = 64
  config.model.name = "resnet64_shallow"
  config.model.spectral_norm = True
  config.model.self_attention = True
  config.prior.name = "empirical"
  config.flow.num_refine_steps = 10
  config.optim.decay_steps = (20_000, 30_000)
  config.training.num_steps = 40_000
  return config
