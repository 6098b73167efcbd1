"""Beyond the studies: a wide ResNet with the state-of-the-art recipe (the next sota.py).

Not a study row (issue "beyond the studies"). configs/sota.py's recipe (flips,
2-pixel translations, 8x8 cutout, label smoothing 0.1, weight decay 5e-4,
Nesterov SGD with a one-cycle learning rate peaking at 0.2, batch 512, bfloat16
arithmetic, flip TTA, all 60,000 training images) on WRN-16-8 (Zagoruyko and
Komodakis 2016; models.WideResNet: pre-activation blocks, 128 -> 256 -> 512
channels at 28 -> 14 -> 7 pixels, global average pooling; 10,961,082 params),
the family behind the best published Fashion-MNIST single models (WRN-40-4
96.7%), for 100 epochs.

Status: built and tested on CPU (shapes, parameter count against the paper's,
the short run below learns), not yet trained at full size: that needs a GPU (about 1.8
GFLOP per training image at WRN-16-4, 4x that at WRN-16-8). Choose depth, width,
epochs and dropout on the validation split first, never on test:

  python -m benchmarks.speedrun --config=configs/sota_wrn.py --seeds=2 \
    --config.data.validation_size=12000
  python -m benchmarks.speedrun --config=configs/sota_wrn.py --seeds=5   # test + ensemble

A CPU run that shows the recipe learns (WRN-10-1, 77,562 params, 2 epochs: test
accuracy 0.8424 after 190 s of training on the shared 2-core CPU):

  python launch.py --config=configs/sota_wrn.py --config.model.depth=10 \
    --config.model.width=1 --config.num_epochs=2 --config.compute_dtype=float32
"""

from ml_collections import ConfigDict

from configs import sota


def get_config():
  config = sota.get_config()
  config.model = ConfigDict(
    {
      "name": "wide_resnet",
      "depth": 16,
      "width": 8,
      "activation": "relu",
      "dropout_rates": 0.0,
      "batch_norm_momentum": 0.9,  # not Keras' 0.99: see models.WideResNet
    }
  )
  config.num_epochs = 100
  return config
