"""Study B, row B4: the tuned 3-conv CNN. Reported test accuracy 0.9268.

The deck: train / val / test accuracy 0.969708 / 0.933167 / 0.9268, test F1 0.927089.

The deck gives "3 conv layers, relu everywhere, Adam lr 0.001, early stopping
patience 10" but not the widths; chosen here (for accuracy and CPU speed):
Conv 32 -> BN -> pool -> Conv 64 -> BN -> pool -> Conv 128 -> BN (3x3 SAME relu;
2x2 max pools; dropout 0.25 after each stage) -> Dense 256 relu -> dropout 0.5
-> Dense 10 (1,701,578 params); batch 128. Each choice was made on validation
accuracy (seed 0), never on test:
- no pool after the third conv: pooling 7x7 to 3x3 drops a row and a column;
  keeping 7x7x128 raised val accuracy from 0.9331 to 0.9361 (test 0.9235 -> 0.9257);
- batch norm after each conv (Keras' BatchNormalization defaults, before the
  relu): val 0.9361 -> 0.9379 (test 0.9257 -> 0.9291, best epoch 31 of 41).
Study B's protocol: 48,000 / 12,000 seeded split, [0, 1] inputs; Keras init and
Adam epsilon 1e-7; best weights restored. The README's B4 runs were trained before
2026-12-02 with pool_order="pool_last", which `--config.pool_order=pool_last`
selects to reproduce them bit for bit; on CPU the default now pools first (the
same function, different float rounding; configs/base.py). Over seeds 0-4 it tests
at 0.9283 +- 0.0026 against pool_last's 0.9304 +- 0.0025 (README, Study B), and at
0.9293 +- 0.0011 rerun on one AMD EPYC (Zen 5) for B6's five pairs.

  python launch.py --config=configs/cnn.py
"""

from ml_collections import ConfigDict

from configs import base

# The study row this config reproduces and its reported test accuracy (fmnist_jax.report).
REPORTED = {"row": "B4 3-conv CNN", "test_accuracy": 0.9268}


def get_config():
  config = base.get_config()
  config.model = ConfigDict(
    {
      "name": "cnn",
      "conv_features": (32, 64, 128),
      "dense_sizes": (256,),
      "kernel_size": 3,
      "activation": "relu",
      "batch_norm": True,
      "pool": (True, True, False),
      "conv_dropout_rates": 0.25,
      "dense_dropout_rates": 0.5,
    }
  )
  config.batch_size = 128
  config.num_epochs = 100  # upper bound; early stopping ends the run
  config.optimizer.name = "adam"
  config.optimizer.learning_rate = 1e-3
  config.early_stopping.enabled = True
  config.early_stopping.patience = 10
  return config
