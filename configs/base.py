"""Every knob of fmnist_jax, with its default. Experiment configs override a few.

Not a study row by itself: its defaults are Keras' (glorot-uniform kernels and
zero biases in `fmnist_jax/layers.py`, Adam epsilon 1e-7) and study B's
protocol (48,000 / 12,000 seeded split, inputs scaled to [0, 1]).

  python launch.py --config=configs/base.py --config.num_epochs=1
"""

from ml_collections import ConfigDict, config_dict


def get_config() -> ConfigDict:
  config = ConfigDict()
  config.seed = 0  # init, dropout and shuffling keys all derive from this
  # Members trained together in one vmapped program, seeds seed, seed + 1, ...; each
  # member equals a single run with its seed. Results give mean +- std over them.
  config.num_seeds = 1
  config.num_epochs = 10  # upper bound; early stopping may end sooner
  config.batch_size = 128  # training batch; the last partial batch is kept (as Keras)
  config.eval_batch_size = 1000  # evaluation batch; splits are padded and masked
  # Convolution implementation: "auto" = im2col on CPU, XLA's conv elsewhere; "hybrid" =
  # XLA's conv with the kernel gradient as matmuls on CPU (faster for some models:
  # fmnist_jax/layers.py), XLA's conv elsewhere; "im2col" or "xla" everywhere.
  config.conv_impl = "auto"
  # The CNN's conv -> batch norm -> activation -> max pool: "auto" = "pool_first" on CPU
  # (the pool moved ahead of batch norm's per-channel map and the activation: the same
  # function on a 4x smaller array, fmnist_jax/layers.py), "pool_last" (as written;
  # runs before 2026-12-02 used it) elsewhere.
  config.pool_order = "auto"
  # XLA:CPU's library for the training step's matmuls: "ynnpack" (faster for large
  # matmuls: CNNs, B2's 2048-wide MLP) or "eigen" (faster for small ones, as A1's
  # 300-100 MLP: configs/mlp_baseline.py; fmnist_jax/platform.py has the figures).
  # The same function; only float rounding differs. Ignored on GPU/TPU.
  config.cpu_matmul_library = "ynnpack"
  # Layer arithmetic: "float32" (Keras' default), or "bfloat16" on GPU/TPU, where it is
  # faster; parameters, optimizer state, batch statistics and the loss stay float32.
  config.compute_dtype = "float32"

  config.data = data = ConfigDict()
  data.source = "idx"  # "idx" (IDX files) or "tfds" (tfds.data_source, needs the tfds extra)
  # IDX directory; None searches $FMNIST_DATA_DIR, the user cache, then
  # /usr/share/datasets/fashion-mnist, and downloads if none has the files.
  data.dir = config_dict.placeholder(str)
  data.tfds_data_dir = config_dict.placeholder(str)  # tfds data_dir for source="tfds"
  data.download = True  # allow downloading the official files when none are found
  # SHA-256 and 60,000 / 10,000 counts of the official files; False accepts other IDX
  # files (a subset, your own data), which are still validated (header, sizes, labels).
  data.verify_checksums = True
  data.validation_size = 12_000  # study B: 80/20 of the 60,000 training images
  data.validation_split = "random"  # "random" (seeded, study B) or "tail" (study A)
  data.split_seed = 0  # fixed across model seeds, so every seed sees the same split
  data.preprocessing = "scale01"  # "scale01", "raw" (0-255) or "standardize"

  config.model = ConfigDict()  # {"name": one of fmnist_jax.models.MODELS, **its arguments}
  config.model.name = "mlp"
  config.model.hidden_sizes = (512,)

  config.optimizer = opt = ConfigDict()
  opt.name = "adam"  # "sgd", "adam" or "adamw"
  opt.learning_rate = 1e-3  # peak learning rate
  opt.momentum = 0.0  # sgd only
  opt.nesterov = False  # sgd only
  opt.b1 = 0.9  # adam/adamw
  opt.b2 = 0.999  # adam/adamw
  opt.eps = 1e-7  # Keras' Adam epsilon (optax's default is 1e-8)
  opt.weight_decay = 0.0  # adamw: decoupled; sgd: added to the gradient (PyTorch's), kernels only
  # "constant", "cosine", "warmup_cosine" or "onecycle" (optax schedules, peaking at
  # learning_rate); warmup_epochs: warmup_cosine's warmup, onecycle's rise (0 = 30%).
  opt.schedule = "constant"
  opt.warmup_epochs = 0.0

  # A member whose training loss turns NaN/inf is stopped (a single run ends, its last good
  # checkpoint kept); > 0 also stops it when a step's loss exceeds this value (chance level
  # is ln 10 = 2.3, so e.g. 10 catches a run that is blowing up before it overflows).
  config.divergence_threshold = 0.0

  # Beyond the studies (configs/cpu_fast.py, sota.py): on-device augmentation of each
  # training batch (fmnist_jax/augment.py), label smoothing, weight averaging, test-time
  # flips. Off by default: the studies used none of them.
  config.augment = aug = ConfigDict()
  aug.flip = False  # mirror left-right with probability 1/2
  aug.translate = 0  # shift by up to this many pixels (random crop of the zero-padded image)
  aug.cutout = 0  # black out one square of this size at a random place
  config.label_smoothing = 0.0  # training targets (1 - a) one-hot + a / 10 (Keras' rule)
  config.ema_decay = 0.0  # > 0: evaluate an exponential moving average of the weights
  config.tta_flip = False  # evaluate the mean logits of each image and its mirror

  config.early_stopping = es = ConfigDict()
  es.enabled = False  # Keras EarlyStopping(monitor="val_loss") semantics
  es.patience = 10  # epochs without improvement before stopping
  es.min_delta = 0.0  # an improvement must lower val loss by more than this
  es.restore_best = True  # restore_best_weights=True: final metrics use the best epoch

  # Optional reconstruction pre-training of an autoencoder model before training on labels.
  config.pretrain = pre = ConfigDict()
  pre.num_epochs = 0  # 0 disables pre-training
  pre.learning_rate = 1e-3  # Adam, with optimizer.eps
  pre.loss = "mse"  # "mse" or "binary_crossentropy" between input and reconstruction

  # A hyperparameter sweep (fmnist_jax/sweep.py): "KEY=V1,V2; KEY2=..." axes, each point
  # trained with num_seeds seeds. Optimizer hyperparameters, dropout rates and label
  # smoothing share one vmapped program; other keys run one program per value, in
  # <workdir>/<key>-<value>/.
  config.sweep = sweep = ConfigDict()
  sweep.grid = ""  # every combination of the axes
  sweep.zip = ""  # axes paired element by element (equal lengths), times the grid
  sweep.metric = "val/accuracy"  # ranks the points and is plotted (a loss is minimized)

  # Scalars besides metrics.jsonl (fmnist_jax/summary.py): steps.jsonl and TensorBoard
  # event files in <workdir>/tensorboard/<member>/ (`tensorboard --logdir runs`).
  config.logging = logging = ConfigDict()
  logging.tensorboard = True  # event files: per-step and per-epoch scalars, config, hparams
  logging.every_steps = 50  # per-step points: mean loss/accuracy of the last N steps; 0 = off

  # At the end of a run: analysis.md (most confused pairs, early-stopping patience) and
  # confusion, per-class F1, misclassified-gallery and learning-curve PNGs (fmnist_jax/analysis.py).
  config.figures = True

  # An ensemble of other experiments (study B3 = B1 + B2, B6 = B4 + B5): when `members` names
  # config files of configs/, launch.py trains (or reuses) each one in <workdir>/../<name>/
  # with this config's seed and num_seeds, then scores member m of every run together.
  config.ensemble = ens = ConfigDict()
  ens.members = ()  # config names, e.g. ("mlp_1hidden", "mlp_2hidden"); () = not an ensemble

  config.checkpoint = ckpt = ConfigDict()
  ckpt.enabled = True  # orbax checkpoints in <workdir>/checkpoints (latest) and best/
  ckpt.max_to_keep = 2  # latest checkpoints kept; the best is kept separately
  # Save the training state every this many epochs (asynchronously), and always at the
  # end and on SIGTERM. A resume replays the epochs after the last save exactly.
  ckpt.every_epochs = 1

  # Data parallelism (fmnist_jax/parallel.py); a resume may change these.
  config.parallel = par = ConfigDict()
  par.num_devices = 0  # 0 = every device of every host; batch sizes must divide by it
  # How the members of one program (seeds, vmapped sweep points) run: "vmap" side by side
  # (batched ops that fill a GPU/TPU), "map" one after another inside the same compiled
  # program (XLA:CPU's unbatched matmuls are faster, and a stopped member's epoch is
  # skipped), "auto" = map on CPU, vmap elsewhere. Results agree to float rounding.
  par.members = "auto"
  par.distributed = (
    False  # jax.distributed.initialize() first (multi-host; or $FMNIST_DISTRIBUTED=1)
  )

  return config
