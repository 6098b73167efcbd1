"""fmnist_jax: the Fashion-MNIST studies reproduced and beaten in JAX / Flax NNX."""

__version__ = "0.1.0"
