"""Study A, row A3: convolutional autoencoder + MLP head. Reported test accuracy 0.8575.

Encoder Conv 16/32/64 (3x3 SAME selu, each followed by a 2x2 max pool) to a
3x3x64 code (23,296 params); decoder ConvTranspose 32 (stride 2, VALID) /
16 / 1 (stride 2, SAME; selu, last sigmoid) back to 28x28 (23,233 params);
the 784-pixel reconstruction feeds Dense 300 relu -> Dense 100 relu -> Dense 10
(266,610 params); 313,139 in all, all trainable. Study A's recipe
(configs/study_a.py); the study does not name A3's optimizer or epochs, so
they are A1's (SGD 0.01 / 0.9, batch 200, 5 epochs).

The study does not say whether the autoencoder was pre-trained; by default the
whole stack trains end to end on labels. Pre-train on reconstruction first with
  python launch.py --config=configs/autoencoder.py --config.pretrain.num_epochs=5

  python launch.py --config=configs/autoencoder.py
"""

from ml_collections import ConfigDict

from configs import study_a

# The study row this config reproduces and its reported test accuracy (fmnist_jax.report).
REPORTED = {"row": "A3 conv autoencoder + MLP", "test_accuracy": 0.8575}


def get_config():
  config = study_a.get_config()
  config.model = ConfigDict(
    {
      "name": "autoencoder",
      "encoder_features": (16, 32, 64),
      "decoder_features": (32, 16, 1),
      "decoder_paddings": ("VALID", "SAME", "SAME"),
      "head_sizes": (300, 100),
      "autoencoder_activation": "selu",
      "head_activation": "relu",
    }
  )
  return config
