"""Process-level XLA settings, applied by the entry points before jax starts its backend.

On XLA:CPU (measured on a 2-core machine, interleaved runs):
- XNNPACK graph fusion makes the scanned train step 1.1-1.4x faster (MLP, CNN);
- LLVM optimisation level 1 instead of 2 cuts a CNN run's compilation from
  11.0 s to 7.2 s and trains as fast or faster (CNN 1,560-1,660 vs 1,500-1,570
  images/s, ResNet 818-830 vs 777-780, MLP 145-150k vs 139-140k): the heavy
  work runs in library kernels (XNNPACK, Eigen), not in LLVM-generated code;
- convolutions run in Eigen, not YNNPACK: YNNPACK's convolution uses one core
  (a 3x3 conv at batch 128 takes the same 12 ms on one core as on two, Eigen's
  6 ms on two), so `conv_impl="hybrid"` (`resnet.py`) trains 1.17-1.19x faster
  (EPYC, 693-752 -> 811-898 images/s). Programs without a convolution op
  (im2col CNNs, MLPs) compile to the same code either way;
- XLA's memory-optimised scheduler instead of its concurrency-optimised one
  starts A1's largest matmul (the first layer's kernel gradient) beside the
  second layer's gradients, not after the small updates: the same bits,
  `mlp_baseline.py` 1.04-1.09x faster (AMD EPYC Zen 5, 276-287k -> 295-301k
  images/s), the other configs within noise.
The flags are set only if the user has not set them, only before jax is
imported, and the LLVM level only where no GPU or TPU plugin is installed (XLA's
GPU backend reads the same flag for the kernels it generates).

On CPU JAX lowers its threefry random-bit hash as a 5-trip `while` loop (to
compile faster), so every dropout mask, shuffle and augmentation round-trips
its whole uint32 array through memory 5 times per step; `unroll_threefry_on_cpu`
gives the CPU the straight-line lowering GPUs and TPUs already get: the same
bits, fused into the code that uses them (B4 CNN 1,700 -> 1,870 images/s,
B5 residual CNN 850 -> 906, interleaved).
"""

import importlib.util
import os
import pathlib
import sys

from fmnist_jax.errors import ConfigError

CPU_FLAGS = (
  "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
  "--xla_cpu_experimental_ynn_fusion_type=-LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION",
  "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED",
)
CPU_ONLY_FLAGS = ("--xla_backend_optimization_level=1",)
# Per program, on CPU-only installs: the small programs a run compiles but barely
# runs (initialisation, early stopping, the final selections and metrics) compile
# with LLVM unoptimised and XLA's older elemental emitters, 40-50% faster. Never
# the training or prediction programs: these options train 10-40% slower.
CHEAP_PROGRAM_OPTIONS = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}


def _accelerator_plugin_installed() -> bool:
  """A JAX GPU plugin (jax_plugins.xla_cuda12, ...) or libtpu is importable."""
  return any(importlib.util.find_spec(name) for name in ("jax_plugins", "libtpu"))


def with_xla_flags(flags: str) -> str:
  """`flags` (an XLA_FLAGS value) plus CPU_FLAGS (and on CPU-only installs
  CPU_ONLY_FLAGS), each unless `flags` already sets it."""
  wanted = CPU_FLAGS + (() if _accelerator_plugin_installed() else CPU_ONLY_FLAGS)
  for flag in wanted:
    if flag.split("=")[0] not in flags:
      flags = f"{flags} {flag}".strip()
  return flags


def configure_xla():
  """XLA_FLAGS `with_xla_flags`. A no-op once jax is imported."""
  if "jax" in sys.modules:
    return
  os.environ["XLA_FLAGS"] = with_xla_flags(os.environ.get("XLA_FLAGS", ""))


def cheap_program_options() -> dict[str, object]:
  """`jax.jit(..., compiler_options=...)` for a program that runs once or once per epoch.

  CHEAP_PROGRAM_OPTIONS where no GPU or TPU plugin is installed (no backend is
  started to decide), else none: XLA's GPU backend reads the first option too.
  """
  return {} if _accelerator_plugin_installed() else dict(CHEAP_PROGRAM_OPTIONS)


# XLA:CPU's library for the matmuls of a training program (config.cpu_matmul_library).
# YNNPACK, CPU_FLAGS' choice, runs small matmuls on one core: A1's 300x100 products at
# batch 200 take 0.06-0.07 ms there and 0.035-0.043 ms in Eigen, on both cores (AMD
# EPYC Zen 5), so `mlp_baseline.py` trains ~15% faster with Eigen; B2's 2048-wide MLP
# trains ~22% slower, an im2col CNN ~3%. A program's own option replaces the whole
# list of YNNPACK fusions: reductions only is CPU_FLAGS' list less the matmuls (the
# same optimised HLO as the process-wide "-LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT").
MATMUL_LIBRARIES = ("ynnpack", "eigen")
_EIGEN_MATMULS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}


def training_program_options(library: str) -> dict[str, object]:
  """`jax.jit(..., compiler_options=...)` for a training program whose matmuls run in
  `library` (one of MATMUL_LIBRARIES): none for "ynnpack" or on a GPU/TPU backend."""
  if library not in MATMUL_LIBRARIES:
    raise ConfigError(
      f"unknown cpu_matmul_library {library!r}; choose one of {list(MATMUL_LIBRARIES)}"
    )
  import jax

  return dict(_EIGEN_MATMULS) if library == "eigen" and jax.default_backend() == "cpu" else {}


def unroll_threefry_on_cpu() -> bool:
  """Lowers jax's threefry2x32 on CPU without its rolled loop (the GPU/TPU lowering).

  Same bits (tests/test_platform.py holds them equal to jax's own lowering),
  fused into their consumers. Returns False, changing nothing, on a jax whose
  private lowering hooks have moved.
  """
  try:
    from jax._src.interpreters import mlir
    from jax._src.random import threefry2x32
  except ImportError:
    try:  # jax < 0.10: the same names in jax._src.prng
      from jax._src import prng as threefry2x32
      from jax._src.interpreters import mlir
    except ImportError:
      return False
  primitive = getattr(threefry2x32, "threefry2x32_p", None)
  unrolled = getattr(threefry2x32, "_threefry2x32_lowering_rule", None)
  if primitive is None or unrolled is None:
    return False
  mlir.register_lowering(primitive, unrolled, platform="cpu")
  return True


def user_cache_dir() -> pathlib.Path:
  """$XDG_CACHE_HOME/fmnist_jax, or ~/.cache/fmnist_jax: downloads and compiled programs."""
  cache_home = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
  return pathlib.Path(cache_home) / "fmnist_jax"


def default_compilation_cache() -> pathlib.Path:
  """Where launch.py and the other command-line tools keep compiled programs."""
  return user_cache_dir() / "compilation"


def enable_compilation_cache(directory: str | os.PathLike | None):
  """JAX's persistent compilation cache in `directory` (None or "": off).

  A rerun, a resume or another seed of a config then loads its programs instead
  of compiling them again; the cache is keyed on the program, the XLA flags and
  the jax version, so a stale entry is never used.
  """
  if not directory:
    return
  import jax

  jax.config.update("jax_compilation_cache_dir", str(directory))
  # Every program (default: those over 1 s), so whether one is cached never depends on timing.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
