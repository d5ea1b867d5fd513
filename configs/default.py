"""Default configuration: FDRL-DDP, LR-KL, on the bundled 8×8 digits. Every key, commented.

Dataset configs import this file and change only what differs; so can a config of your own, in any
folder, with the package installed: ``from fdrl_jax.configs import default``.

Run (CPU, about 3 minutes on 2 cores):
  python -m fdrl_jax.main --config=configs/digits.py --workdir=runs/digits
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0                     # fixes the data split, the initialisation and every step's keys
  # fdrl: FDRL (an estimator flows prior samples); gan: a GAN trained in the MonoFlow view (the
  # estimator of `model` is the discriminator, `generator` and `gan` below set the rest);
  # classifier: an image classifier (`classifier` below) to guide conditional sampling.
  config.method = "fdrl"

  config.data = ml_collections.ConfigDict()
  # A bundled set (fdrl_jax.bundled.DATASETS: digits, chasm, 8gaussians, ...), a tensorflow-datasets
  # preset (fdrl_jax.datasets.TFDS_PRESETS: cifar10, celeb_a, lsun_church, mnist, each with its
  # own splits and preprocessing), "tfds" (any prepared tfds set, data.tfds_name below), "folder"
  # (any folder of PNG/JPEG images at data.path; grey if all its images are) or "npz" (an NHWC
  # array, key "x", at data.path).
  config.data.name = "digits"
  config.data.batch_size = 64         # global batch, split over all devices
  config.data.dequantization = 0.03   # σ of the Gaussian noise added to image data (Algorithm 1)
  config.data.random_flip = False     # random horizontal flips of image data (off for digits)
  config.data.data_dir = ""           # tfds: data folder ("" = tfds's default, $TFDS_DATA_DIR)
  config.data.tfds_name = ""          # tfds: the set, "name[/config][:version]" (my_faces:1.0.0)
  config.data.image_key = "image"     # tfds: its image feature (uint8, grey or RGB)
  config.data.train_split = "train"   # tfds: training split, tfds syntax ("train[:90%]" works)
  config.data.test_split = ""         # tfds: held-out split ("" = none), e.g. "test"
  config.data.path = ""               # folder / npz: where the training images are
  config.data.test_path = ""          # folder: held-out images ("" = none)
  config.data.image_size = 64         # folder / tfds: output size (shorter side resized, crop)
  config.data.resize_first = 0        # folder / tfds: resize the shorter side to this first (0: no)
  config.data.center_crop = 0         # folder / tfds: centre crop before the final resize (0: no)
  config.data.stretch = False         # folder / tfds: resize both sides to image_size, no crop
  config.data.max_fit_samples = 10_000  # training images decoded to fit the prior (and kept in
                                      # memory when the split is no larger)

  config.model = ml_collections.ConfigDict()
  config.model.name = "conv"          # fdrl_jax.models.MODELS: mlp | conv | resnet32 | resnet64 |
                                      # resnet128 | resnet64_shallow | dcgan | monoflow_dcgan
  config.model.width = 64             # mlp: hidden width
  config.model.depth = 4              # mlp: number of hidden layers
  config.model.channels = (32, 64, 64)  # conv: channels per 3×3 conv (stride 2 after the first)
  config.model.negative_slope = 0.2   # LeakyReLU slope
  config.model.spectral_norm = False  # resnets: spectral norm on every conv and dense layer
  config.model.sn_every_call = True   # spectral norm's power iteration in every forward pass of
                                      # a training step (K + 2), as the reference; False: one per
                                      # step (measured worse: experiments/README.md)
  config.model.self_attention = False  # resnets: SAGAN self-attention at 128 channels
  config.model.resnet_width = 1.0     # resnets: channels × this (the paper's: 1)
  config.model.bf16 = False           # resnets: bfloat16 compute, float32 parameters (GPU/TPU)
  config.model.neutral_init = True    # start at the ratio r = 1: the output bias is 1 when the
                                      # loss's network outputs r (lsif); False: the reference's 0
  config.model.torch_init = False     # True: PyTorch's initialisation (weights and biases uniform
                                      # on ±1/√fan-in), the reference's; False: Flax's LeCun normal

  config.loss = ml_collections.ConfigDict()
  # Bregman loss: lsif | lr | kl (fdrl_jax.losses.LOSSES); f-divergence of the flow: pearson | kl |
  # js | logd. On these digits with these flow settings LR-KL reached FD-digits 23.7 after 1 500
  # steps and LSIF-χ² 27.8 (prior 155.8, real floor 18.0; experiments/digits_table.py).
  config.loss.name = "lr"
  config.loss.divergence = "kl"

  config.flow = ml_collections.ConfigDict()
  config.flow.num_steps = 20          # K, flow steps per training step (Eq. 9; paper: 100)
  config.flow.num_refine_steps = 5    # κ, extra steps at sampling (paper: 20 for DDP, 10 for UP)
  config.flow.step_size = 1.0         # η (paper: 3)
  config.flow.noise_scale = 1e-2      # ν
  config.flow.clip = True             # clip particles to [-1, 1] after every step (images)
  config.flow.clip_every_step = True  # False: clip only the final samples, not the particles the
                                      # flows move (training's are never clipped): the reference's

  config.prior = ml_collections.ConfigDict()
  # gaussian (full covariance fitted to the data, Eq. 8) | low_rank (top-k PCA + isotropic rest,
  # for large images) | uniform (on [-1, 1]) | normal | empirical (images of prior.source_path:
  # the source domain of translation)
  config.prior.name = "gaussian"
  config.prior.jitter = 1e-4          # gaussian, low_rank: added to the covariance's diagonal
  config.prior.rank = 64              # low_rank: number of principal components
  config.prior.source_path = ""       # empirical: folder of source images (data.* preprocessing;
                                      # a bundled translation set such as digits_bold has its own)
  config.prior.source_test_path = ""  # empirical: held-out source images, translated by --mode=eval
  config.prior.loc = 0.0              # normal: mean of every coordinate
  config.prior.scale = 1.0            # normal: standard deviation of every coordinate

  # method = gan: the generator x = G(z), z ~ N(0, I), and the MonoFlow generator loss −E[h(d)].
  config.generator = ml_collections.ConfigDict()
  config.generator.name = "mlp"       # fdrl_jax.generators.GENERATORS: mlp | dcgan | monoflow_dcgan
  config.generator.latent_dim = 100   # dimension of z
  config.generator.width = 256        # mlp: hidden width
  config.generator.depth = 2          # mlp: number of hidden layers
  config.generator.channels = (128, 64)  # dcgan: widths before each ×2 upsampling (4ngf, 2ngf[, ngf]);
                                         # monoflow_dcgan: widths from 4² on (8ngf, 4ngf, ...)

  config.gan = ml_collections.ConfigDict()
  # h of the generator loss (fdrl_jax.monoflow.MONOTONE_MAPS): logit | vanilla | non_saturating |
  # arcsinh | exp. vanilla is log(1 − σ(d + shift)); exp is exp(scale·d).
  config.gan.h = "non_saturating"
  config.gan.shift = 0.0              # vanilla: C
  config.gan.scale = 1.5              # exp: a
  config.gan.gen_learning_rate = 1e-4  # Adam, generator (MonoFlow's DCGAN setting)
  config.gan.disc_learning_rate = 2e-4  # Adam, discriminator
  config.gan.b1 = 0.5
  config.gan.b2 = 0.999
  config.gan.reuse_fake = False       # True: MonoFlow's step, one G(z) for both updates

  # method = gan, sampling.name = refine: DGflow-style refinement of G(z) along the trained
  # discriminator's MonoFlow, z ← z + η h'(d)∇d + ν ξ in latent space (or x ← ... in data space).
  # May change between runs on one workdir (a sampling choice, like `eval`).
  config.refine = ml_collections.ConfigDict()
  config.refine.num_steps = 0         # with sampling.name=refine (0: G(z) as is)
  config.refine.h = "logit"           # MONOTONE_MAPS name (logit = DGflow's KL flow)
  config.refine.space = "latent"      # latent | data
  config.refine.step_size = 0.1       # η (DGflow on CIFAR10)
  config.refine.noise_scale = 0.045   # ν = √(2ηγ) with DGflow's γ = 0.01

  # How --mode=sample / eval / figure draw (fdrl_jax.sampling.SAMPLERS). May change between runs on
  # one workdir (a sampling choice, like `eval`).
  config.sampling = ml_collections.ConfigDict()
  # prior: Algorithm 2 (a GAN: G(z)) | refine: a GAN's G(z) refined per `refine` | conditional:
  # class-conditional FDRL with a classifier (Eq. 12, 29-31) | translate: --mode=translate's flow
  config.sampling.name = "prior"
  config.sampling.label = 0           # conditional: the requested class n
  config.sampling.classifier_workdir = ""  # conditional: a workdir of --config.method=classifier
  config.sampling.classifier_weight = 0.1  # conditional: ϕ, the classifier's weight (paper: 0.1)

  # method = classifier: a conv classifier (fdrl_jax.classifier), adversarially robust by PGD-L2
  # training when epsilon > 0; trained with `optim` (no EMA) on labelled data (digits, mnist,
  # cifar10).
  config.classifier = ml_collections.ConfigDict()
  # conv (fdrl_jax.classifier.ClassifierNet) | resnet18 | resnet34 | resnet50 (MadryLab
  # robustness's CIFAR ResNets, batch norm folded: imported by python -m fdrl_jax.import_reference)
  config.classifier.name = "conv"
  config.classifier.resnet_width = 1.0  # resnets: widths (64, 128, 256, 512) × this
  config.classifier.input_mean = ()   # resnets: [0, 1]-pixel input normalisation (robustness's
  config.classifier.input_std = ()    # normalizer buffers); () for none
  config.classifier.channels = (32, 64, 64)  # 3×3 conv widths (stride 2 after the first)
  config.classifier.hidden = 128      # width of the dense layer before the output
  config.classifier.num_classes = 10
  config.classifier.epsilon = 0.0     # PGD-L2 radius in [-1, 1] pixel units (0: plain training)
  config.classifier.num_steps = 7     # PGD steps per training step (and for eval's robust accuracy)
  config.classifier.step_size = 0.0   # PGD step (0: 2.5·epsilon/num_steps)
  config.classifier.noise = 0.0       # σ of Gaussian noise added to the training images

  config.optim = ml_collections.ConfigDict()
  config.optim.learning_rate = 1e-3   # Adam (paper: 1e-4 at batch 64 for 100k steps)
  config.optim.b1 = 0.9
  config.optim.b2 = 0.999
  config.optim.decay_steps = (1600, 1800)  # learning rate × 0.1 at each (paper: 80k, 90k)
  config.optim.ema_decay = 0.998      # EMA of the parameters, used for sampling

  config.training = ml_collections.ConfigDict()
  config.training.num_steps = 2000    # total training steps (a resumed run continues to this)
  config.training.log_every = 50      # metrics line and NaN check
  config.training.checkpoint_every = 500
  config.training.keep_checkpoints = 3
  config.training.sample_every = 1000  # PNG sample grid (EMA parameters, K + κ steps)
  config.training.num_grid_samples = 64
  config.training.eval_every = 0      # the method's --mode=eval every N steps, into eval.jsonl,
                                      # TensorBoard (eval/*) and metrics.png (0: never)

  config.eval = ml_collections.ConfigDict()
  config.eval.metric = "fd_digits"    # --mode=eval: fd_digits (bundled digits) | fd_mnist | fid |
                                      # mmd (2-D toy sets)
  config.eval.num_samples = 1000      # samples drawn with the EMA estimator, K + κ steps
  config.eval.inception_weights = ""  # fid: .npz of the FID Inception (inception_weights.py)
  config.eval.num_reference = 10_000  # fid: training images behind the cached statistics (0: all)
  config.eval.fast = False            # True: 1 000 samples against 10 000 training images (quick,
                                      # biased FID of a run in progress; KID beside it by default)
  config.eval.batch_size = 0          # particles per sampling call (0: data.batch_size)
  config.eval.metrics = ""            # comma-separated: eval.metric's family (fid | fd_digits |
                                      # fd_mnist | mmd) and kid, is, pr ("": eval.metric alone)
  config.eval.flow_lengths = ""       # comma-separated K + κ' scored from one flow ("": K + κ;
                                      # sampling.name=refine: refinement steps, 0 = before)
  config.eval.quantize = False        # True: samples rounded to 8 bits as saved PNGs (the field's
                                      # protocol); False: float samples, the paper's protocol
  config.eval.judge_workdir = ""      # conditional: the classifier run judging the on-class share
                                      # (never sampling.classifier_workdir, the guiding one)
  config.eval.reference_stats = ""    # .npz of the reference's statistics (--mode=stats, or
                                      # pytorch-fid's / clean-fid's): used instead of the data's
  config.eval.checkpoints = "latest"  # checkpoints --mode=eval scores: latest | all | every:N (the
                                      # steps divisible by N) | S1,S2 (those steps)
  return config
