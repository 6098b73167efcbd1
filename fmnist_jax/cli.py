"""Command-line plumbing shared by launch.py and the benchmarks: one-line flag errors.

absl and ml_collections report a missing config file, a file without
`get_config`, an unknown `--config.KEY` or a badly typed value as tracebacks or
FATAL lines. `parse_flags` (for `app.run(main, flags_parser=parse_flags)`)
turns each into one `error:` line naming the problem and the fix, exit status 2.
"""

import pathlib
import re
import sys

from absl import flags

EXIT_USER_ERROR = 2
EXIT_PREEMPTED = 143  # 128 + SIGTERM, as if the signal had ended the process
CONFIGS_DIR = pathlib.Path(__file__).resolve().parent.parent / "configs"


def fail(message: str):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(EXIT_USER_ERROR)


def _config_flag(argv) -> str | None:
  """The --config value as given: "configs/x.py" or "configs/x.py:arg"."""
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _config_path(argv) -> str | None:
  value = _config_flag(argv)
  return None if value is None else value.split(":", 1)[0]


def default_workdir(argv) -> pathlib.Path:
  """runs/<config file name>, or runs/<name>_<arg> for `--config=configs/<name>.py:<arg>`."""
  path, _, arg = (_config_flag(argv) or "").partition(":")
  name = pathlib.Path(path).stem + (f"_{arg}" if arg else "")
  return pathlib.Path("runs") / name


def available_configs() -> list[str]:
  """The experiment configs' names (configs/<name>.py; files starting with _ are private)."""
  return sorted(p.stem for p in CONFIGS_DIR.glob("*.py") if not p.stem.startswith("_"))


def load_config(name: str, argument: str | None = None):
  """configs/<name>.py's get_config([argument]), as `--config=configs/<name>.py[:argument]`."""
  import importlib

  module = importlib.import_module(f"configs.{name}")
  return module.get_config(argument) if argument else module.get_config()


def _keys_beside(argv, override: str) -> str:
  """'config.optimizer has: b1, ..., name' for an unknown `--config.optimizer.lr`: the keys
  of the deepest section of the override that the config file has ("" if it cannot load)."""
  import importlib.util

  path, _, argument = (_config_flag(argv) or "").partition(":")
  try:
    spec = importlib.util.spec_from_file_location("_config_file", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    section = module.get_config(argument) if argument else module.get_config()
  except Exception:  # the load error itself is reported by the caller's path
    return ""
  name = "config"
  for part in override.removeprefix("--config.").split(".")[:-1]:
    if not hasattr(section.get(part), "keys"):
      break
    section, name = section[part], f"{name}.{part}"
  return f"{name} has: {', '.join(sorted(section.keys()))}"


def parse_flags(argv):
  """FLAGS(argv), with user mistakes reported in one line (a traceback with --debug)."""
  if "--debug" in argv:
    return flags.FLAGS(argv)
  path = _config_path(argv)
  if path is not None and not pathlib.Path(path).is_file():
    choices = ", ".join(f"configs/{name}.py" for name in available_configs())
    fail(f"config file {path} not found; choose one of: {choices}")
  try:
    remaining = flags.FLAGS(argv)
  except flags.Error as error:
    text = str(error)
    if "before a value for --config was specified" in text:
      override = text.split()[1]
      fail(f"{override} comes before --config=FILE; put --config=FILE first, then overrides")
    if "Error whilst parsing config file" in text:  # get_config raised; absl quotes its traceback
      raised = [line for line in text.splitlines() if line.strip()][-1]
      fail(f"config {_config_flag(argv)} failed to load: {raised}")
    fail(f"{text}; see --help for the flags")
  except (AttributeError, KeyError) as error:  # ml_collections' unknown field or section
    text = str(error.args[0] if error.args else error).replace("\n", " ").strip("'\" ")
    if "get_config" in text:
      fail(
        f"config file {path} does not define get_config(); a config file defines "
        f"get_config() returning an ml_collections.ConfigDict (see configs/cnn.py)"
      )
    suggestion = re.search(r'Did you mean "([^"]+)"', text)
    unknown = text[: suggestion.start()] if suggestion else text
    keys = [arg.split("=", 1)[0] for arg in argv if arg.startswith("--config.")]
    # ml_collections names the missing field or section ("'lr'"): name the flags with it.
    named = [
      key
      for key in keys
      if any(re.search(rf"\b{re.escape(part)}\b", unknown) for part in key.split(".")[1:])
    ]
    keys = named or keys
    where = "configs/base.py lists every key"
    if any(key.startswith("--config.model.") for key in keys):
      where = (
        f"the model section of {path} lists the keys it declares; the model's "
        f"arguments are those of its class in fmnist_jax/models.py"
      )
    if suggestion:
      hint = f": did you mean {suggestion[1]!r}? "
    else:  # nothing close: name what the section does have
      beside = _keys_beside(argv, keys[0]) if len(keys) == 1 else ""
      hint = f" ({text}); {beside + '; ' if beside else ''}"
    fail(f"unknown config key in {' '.join(keys)}{hint}{where}")
  except (TypeError, ValueError) as error:
    fail(f"bad config override: {error}; configs/base.py lists every key and its type")
  except (OSError, SyntaxError, ImportError, NameError) as error:
    fail(f"config file {path} failed to load: {type(error).__name__}: {error}")
  if len(remaining) > 1:
    fail(
      f"unexpected arguments {remaining[1:]}; pass options as --config=FILE, "
      f"--config.KEY=VALUE and --workdir=DIR (see --help)"
    )
  return remaining


def explain(error: Exception, config, workdir: pathlib.Path) -> str | None:
  """The one-line message for an error the user can act on, or None for a bug.

  User mistakes (UserError), a loss that became NaN, a full disk, an accelerator
  out of memory and unwritable files all get a message naming the problem and
  the fix. Checkpoints already written are kept in every case.
  """
  from fmnist_jax import checkpoint
  from fmnist_jax.errors import UserError

  if isinstance(error, UserError | FloatingPointError):
    return str(error)
  if checkpoint.disk_full(error):
    return checkpoint.disk_full_message(workdir)
  text = str(error)
  if "RESOURCE_EXHAUSTED" in text or "Out of memory" in text:
    first_line = text.strip().splitlines()[0][:300]
    return (
      f"out of memory on the accelerator ({first_line}). Lower batch_size (now "
      f"{config.batch_size}) or eval_batch_size (now {config.eval_batch_size}), train fewer "
      f"members at once (num_seeds now {config.num_seeds}), or spread the batch over more "
      f"devices; checkpoints in {workdir} are kept, so rerunning resumes"
    )
  if isinstance(error, PermissionError | IsADirectoryError | NotADirectoryError):
    return (
      f"cannot write {error.filename}: {error.strerror}; make it writable or pass another --workdir"
    )
  return None


def dry_run(config, workdir: pathlib.Path) -> str:
  """What a run of `config` would do, without data or training: the resolved config, the
  model's parameters per layer, the programs and members, and the workdir's state."""
  import jax
  from flax import nnx

  from fmnist_jax import config_checks, metrics, models, parallel, runs, sweep

  config_checks.check(config)  # a mistake fails here as it would before training
  lines = [f"Resolved config:\n{config}"]
  if config.ensemble.members:
    block = ["Ensemble of (each trained in, or reused from, its own workdir):"]
    for name, member in runs.member_configs(config):
      config_checks.check(member)
      block.append(f"  {name}: {workdir.parent / name}, {member.num_seeds} seed(s)")
    lines.append("\n".join(block))
  else:
    model = nnx.eval_shape(
      lambda: models.build(config.model, conv_impl=config.conv_impl, rngs=nnx.Rngs(0))
    )
    table = models.param_table(model)
    rows = [[layer, shapes, f"{count:,}"] for layer, shapes, count in table]
    rows.append(["total (trainable)", "", f"{models.count_params(model):,}"])
    lines.append(
      metrics.render_table(
        ["Layer", "Parameters", "Count"], rows, title=f"Model {config.model.name}"
      )
    )
    block = []
    for program in sweep.programs(config):
      where = workdir / program.name if program.name else workdir
      seeds = ", ".join(map(str, sorted(set(program.members.seeds))))
      block.append(f"Program {where}: {len(program.members)} member(s), seeds {seeds}")
    layout = parallel.make_layout(config)
    block.append(
      f"Devices: {layout.num_devices} {jax.devices()[0].platform} "
      + (f"(batch {config.batch_size // layout.num_devices} per device)" if layout.mesh else "")
    )
    lines.append("\n".join(block))
  state = "exists: a rerun resumes it" if (workdir / "config.json").exists() else "new"
  lines.append(f"Workdir {workdir} ({state}). Nothing was trained (--dry_run).")
  return "\n\n".join(lines)
