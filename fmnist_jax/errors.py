"""The one exception type for user mistakes.

Anything the user can fix (a path, a file, a config value) raises a `UserError`
whose message names the problem and the fix. `launch.py` prints it on one line
and exits with status 2 instead of showing a traceback.
"""


class UserError(Exception):
  """A mistake the user can fix; the message says what and how."""


class DataError(UserError):
  """A dataset file is missing, corrupt or inconsistent."""


class ConfigError(UserError):
  """A config value is unknown, of the wrong type or impossible."""


class Preempted(Exception):
  """SIGTERM stopped a run after saving its checkpoint; rerunning the command resumes it."""
