"""PyTorch peer: the idiomatic plain training loop (eager, or torch.compile with --variant=compile).

python -m benchmarks.peers.torch_peer --spec=SPEC.json --data=DATA.npz [--variant=compile]
"""

import time

import numpy as np
import torch
from torch import nn

from benchmarks.peers.common import parse_args, report, scaled


def mlp(spec):
  model = spec["model"]
  layers, width = [nn.Flatten()], 28 * 28
  for size in model["hidden_sizes"]:
    layers += [nn.Linear(width, size), nn.ReLU()]
    width = size
  return nn.Sequential(*layers, nn.Linear(width, 10))


def _head(width, model):
  layers = [nn.Flatten()]
  for size in model["dense_sizes"]:
    layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(model["dense_dropout_rates"])]
    width = size
  return layers + [nn.Linear(width, 10)]


def keras_batch_norm(features):
  """Keras' BatchNormalization defaults (momentum 0.99 = torch's 0.01, epsilon 1e-3)."""
  return nn.BatchNorm2d(features, eps=1e-3, momentum=0.01)


def conv_stage(in_features, features, batch_norm):
  norm = [keras_batch_norm(features)] if batch_norm else []
  return nn.Sequential(nn.Conv2d(in_features, features, 3, padding=1), *norm, nn.ReLU())


class ResidualBlock(nn.Module):
  def __init__(self, in_features, features):
    super().__init__()
    self.conv1 = nn.Conv2d(in_features, features, 3, padding=1)
    self.conv2 = nn.Conv2d(features, features, 3, padding=1)
    self.norm1 = keras_batch_norm(features)
    self.norm2 = keras_batch_norm(features)
    self.projection = nn.Conv2d(in_features, features, 1) if in_features != features else None

  def forward(self, x):
    y = torch.relu(self.norm1(self.conv1(x)))
    y = self.norm2(self.conv2(y))
    return torch.relu(y + (self.projection(x) if self.projection is not None else x))


def stacked(make_stage, widths, pools, dropout_rate, model):
  """Stages, each followed by [2x2 max pool] and dropout, then the dense head."""
  layers, channels, side = [], 1, 28
  for features, pool in zip(widths, pools, strict=True):
    layers.append(make_stage(channels, features))
    if pool:
      layers.append(nn.MaxPool2d(2))
      side //= 2
    layers.append(nn.Dropout(dropout_rate))
    channels = features
  return nn.Sequential(*layers, *_head(channels * side * side, model))


def cnn(spec):
  model = spec["model"]
  stage = lambda a, b: conv_stage(a, b, model["batch_norm"])  # noqa: E731
  return stacked(stage, model["conv_features"], model["pool"], model["conv_dropout_rates"], model)


def resnet(spec):
  model = spec["model"]
  return stacked(
    ResidualBlock, model["stage_features"], model["pool"], model["dropout_rates"], model
  )


def keras_init(module):
  """Keras' defaults, as fmnist_jax's models have them: glorot-uniform kernels, zero biases."""
  if isinstance(module, nn.Linear | nn.Conv2d):
    nn.init.xavier_uniform_(module.weight)
    nn.init.zeros_(module.bias)


def optimizer(spec, params):
  opt = spec["optimizer"]
  if opt["name"] == "sgd":
    return torch.optim.SGD(
      params, lr=opt["learning_rate"], momentum=opt["momentum"], nesterov=opt["nesterov"]
    )
  return torch.optim.Adam(
    params, lr=opt["learning_rate"], betas=(opt["b1"], opt["b2"]), eps=opt["eps"]
  )


def main():
  args, spec, arrays = parse_args()
  torch.manual_seed(args.seed)
  # The GPU when there is one, with the data on it from the start, as fmnist_jax keeps it.
  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  torch.backends.cudnn.benchmark = True
  model = {"mlp": mlp, "cnn": cnn, "resnet": resnet}[spec["model"]["name"]](spec)
  model = model.apply(keras_init).to(device)
  num_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
  opt = optimizer(spec, model.parameters())
  loss_fn = nn.CrossEntropyLoss()
  step = torch.compile(model) if args.variant == "compile" else model
  images = torch.from_numpy(scaled(arrays["train_images"])[:, None]).to(device)  # NCHW
  labels = torch.from_numpy(arrays["train_labels"].astype(np.int64)).to(device)
  batch = spec["batch_size"]
  generator = torch.Generator().manual_seed(args.seed)
  epoch_seconds = []
  for _ in range(spec["epochs"]):
    start = time.perf_counter()
    model.train()
    order = torch.randperm(len(labels), generator=generator)
    for first in range(0, len(labels), batch):
      index = order[first : first + batch].to(device)
      opt.zero_grad(set_to_none=True)
      loss_fn(step(images[index]), labels[index]).backward()
      opt.step()
    if device.type == "cuda":
      torch.cuda.synchronize()
    epoch_seconds.append(time.perf_counter() - start)
  model.eval()
  with torch.no_grad():
    test = torch.from_numpy(scaled(arrays["test_images"])[:, None]).to(device)
    predictions = torch.cat([model(chunk).argmax(1) for chunk in test.split(1000)])
  accuracy = (predictions.cpu().numpy() == arrays["test_labels"]).mean()
  name = "pytorch" + (" (torch.compile)" if args.variant == "compile" else "")
  report(name, spec, num_params, epoch_seconds, accuracy, args.seed)


if __name__ == "__main__":
  main()
