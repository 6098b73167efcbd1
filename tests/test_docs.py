"""Every training command the docs print still runs: its config loads, its overrides name real
keys with valid values, and `--dry_run` plans it (model, programs) without training."""

import pathlib
import re
import shlex

import pytest
from absl import flags
from ml_collections import config_flags

from fmnist_jax import cli, config_checks

# ml_collections loads a config file with importlib's load_module, deprecated in Python 3.12.
pytestmark = pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "configs" / "README.md", *sorted(ROOT.glob("configs/*.py"))]
# A command with one of these is a template for the reader to fill in, not a command.
PLACEHOLDER = re.compile(r"<|\.\.\.|KEY|=N\b|\$")


def _commands(text: str) -> list[str]:
  """The `--config=configs/...` commands of a doc: code lines (backslash continuations
  joined) and inline code spans; optional `[--flag]` parts dropped, `# comments` cut."""
  joined = re.sub(r"\\\n\s*", " ", text)
  found = re.findall(r"`([^`\n]*--config=configs/[^`\n]*)`", joined)
  for line in joined.splitlines():
    if "launch.py --config=configs/" in line and "`" not in line:
      found.append(line.split("launch.py", 1)[1])
  commands = []
  for command in found:
    command = re.sub(r"\s+#.*$", "", re.sub(r"\[--[^\]]*\]", "", command)).strip(" '")
    if not PLACEHOLDER.search(command):
      commands.append(command)
  return commands


def _config_arguments(command: str) -> tuple[str, ...]:
  """The --config and --config.KEY=VALUE arguments of a command (other flags are launch's)."""
  arguments = shlex.split(command)
  start = next(i for i, argument in enumerate(arguments) if argument.startswith("--config="))
  return tuple(a for a in arguments[start:] if a.startswith(("--config=", "--config.")))


DOCUMENTED = sorted(
  {
    (path.relative_to(ROOT).as_posix(), _config_arguments(command))
    for path in DOCS
    for command in _commands(path.read_text())
  }
)


def test_the_docs_hold_a_command_for_every_experiment_config():
  documented = {arguments[0].removeprefix("--config=").split(":")[0] for _, arguments in DOCUMENTED}
  shared_bases = {"base", "study_a"}  # recipes the experiment configs build on
  experiments = {f"configs/{name}.py" for name in set(cli.available_configs()) - shared_bases}
  assert experiments <= documented, experiments - documented
  assert len(DOCUMENTED) > 40  # the extraction still finds the docs' commands


@pytest.mark.parametrize(("doc", "arguments"), DOCUMENTED, ids=[" ".join(a) for _, a in DOCUMENTED])
def test_a_documented_command_loads_and_plans(doc, arguments, tmp_path):
  argv = ["launch.py", *arguments]
  values = flags.FlagValues()  # launch.py's --config flag, on its own flags and argv
  config_flags.DEFINE_config_file("config", flag_values=values, lock_config=True, sys_argv=argv)
  try:
    values(argv)
  except Exception as error:  # absl and ml_collections raise several kinds: name the doc
    pytest.fail(f"{doc}: `{' '.join(arguments)}` no longer parses: {error}")
  if any("parallel." in argument for argument in arguments):
    config_checks.check(values.config)  # planning it needs the devices it names
    return
  plan = cli.dry_run(values.config, tmp_path / "run")
  assert "Nothing was trained" in plan
