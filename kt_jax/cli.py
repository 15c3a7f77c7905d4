"""What the absl entry points (`kt_jax.main`, `kt_jax.bench`) share: flag parsing whose errors
are one line, and model overrides that take any constructor argument of the chosen model.

ml_collections defines one flag per overridden key and rejects a key the config lacks, which
is what catches `--config.batch_szie=8`. A model's `overrides` cannot list every argument of
every model in advance (the model is chosen by another key), so each
`--config.<...>.overrides.<arg>=<value>` is taken out of argv before absl sees it and set on
the loaded config afterwards; the stage's check then compares the keys with the chosen
model's constructor arguments (`kt_jax.stages.checks.check_model`).
"""
import ast
import glob
import os
import re
import sys

from absl import app, flags
from ml_collections import config_dict

from kt_jax import errors
from kt_jax.errors import UserError

_OVERRIDE = re.compile(r"^--?config\.((?:[A-Za-z_]\w*\.)*overrides)\.([A-Za-z_]\w*)(=.*)?$",
                       re.S)
_CONFIG_FILE = re.compile(r"^--?config=(.*)$", re.S)


def parse_literal(text: str):
  """A command-line value as ml_collections reads untyped ones: a Python literal, else text."""
  if text in ("true", "false"):
    text = text.capitalize()
  try:
    return ast.literal_eval(text)
  except (SyntaxError, ValueError):
    return text


def split_model_overrides(argv: list[str]) -> tuple[list[str], list[tuple[str, str, object]]]:
  """argv without `--config.<path>.overrides.<key>=<value>`, and those as (path, key, value)."""
  rest, overrides = [], []
  for i, arg in enumerate(argv):
    match = _OVERRIDE.match(arg) if i else None
    if match is None:
      rest.append(arg)
      continue
    path, key, value = match.groups()
    if value is None:
      raise UserError(f"{arg}: give a value, e.g. {arg}=0.1")
    overrides.append((path, key, parse_literal(value[1:])))
  return rest, overrides


def apply_model_overrides(config, overrides) -> None:
  """Sets each (path, key, value) on the loaded config, adding keys the dict lacks."""
  for path, key, value in overrides:
    node = config
    for part in path.split("."):
      if not isinstance(node, config_dict.ConfigDict) or part not in node:
        raise UserError(f"--config.{path}.{key}: the config has no `{path}` to override.")
      node = node[part]
    if not isinstance(node, config_dict.ConfigDict):
      raise UserError(f"--config.{path}.{key}: `{path}` is not a dict of overrides.")
    try:
      with node.unlocked():
        node[key] = value
    except TypeError as e:  # an existing key of another type
      raise UserError(f"--config.{path}.{key}={value!r}: {errors.one_line(e)}") from None


def _config_file(argv) -> str:
  for arg in argv:
    match = _CONFIG_FILE.match(arg)
    if match:
      return match.group(1)
  return ""


def _unknown_key_message(error, argv) -> str:
  """ml_collections' nested KeyError -> one line naming the flag and its likely fix."""
  while error.args and isinstance(error.args[0], BaseException):
    error = error.args[0]
  text = str(error.args[0]) if error.args else str(error)
  found = re.search(r"'(\w+)'", text)
  key = found.group(1) if found else errors.one_line(text)
  component = re.compile(rf"\.{re.escape(key)}(?=[.=]|$)")
  flag = next((a.split("=", 1)[0] for a in argv if a.startswith("--config.")
               and component.search(a.split("=", 1)[0])), f"--config.{key}")
  message = f"Unknown config key {flag}: the config has no `{key}`"
  suggestion = re.search(r'Did you mean "([^"]+)"', text)
  if suggestion:
    message += f"; did you mean {component.sub('.' + suggestion.group(1), flag, count=1)}?"
  return message


def _config_load_message(error, argv) -> str:
  path = _config_file(argv).split(":", 1)[0]
  if path and not os.path.isfile(path):
    root = os.path.dirname(path) or "."
    shipped = sorted(glob.glob(os.path.join(root, "*.py")))
    if not shipped:
      shipped = sorted(glob.glob(os.path.join("configs", "*.py")))
    listing = ", ".join(shipped) if shipped else "none found"
    return f"No config file {path}. Configs: {listing}"
  detail = [line.strip() for line in str(error).splitlines() if line.strip()]
  return f"Could not load config {path}: {detail[-1] if detail else type(error).__name__}"


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with one-line errors (UserError) and free-form model overrides."""
  argv, overrides = split_model_overrides(argv)
  argv = [a for a in argv if a != "--debug"]  # read by errors.debug_enabled from sys.argv
  sys.argv = argv  # ml_collections reads the --config.* overrides from sys.argv
  try:
    rest = flags.FLAGS(argv)
  except flags.Error as e:
    raise UserError(errors.one_line(e)) from e
  except (AttributeError, KeyError) as e:  # ml_collections: an override the config lacks
    raise UserError(_unknown_key_message(e, argv)) from e
  except OSError as e:  # ml_collections: the config file is missing or does not load
    raise UserError(_config_load_message(e, argv)) from e
  config = flags.FLAGS["config"].value
  try:
    config.keys()  # a config file that failed to load raises its deferred error here
  except OSError as e:
    raise UserError(_config_load_message(e, argv)) from e
  apply_model_overrides(config, overrides)
  if len(rest) > 1:
    raise UserError(f"Unexpected arguments: {' '.join(rest[1:])} (flags are --name=value)")
  return rest


def run(main, prog: str) -> None:
  """`app.run(main)` where a UserError, while parsing or running, is one line and exit 2."""
  debug = errors.debug_enabled()
  if debug:
    os.environ["KT_JAX_DEBUG"] = "1"  # --debug is removed from argv before absl parses it
  app.run(lambda argv: errors.exit_on_user_error(main, argv, prog=prog),
          flags_parser=lambda argv: errors.exit_on_user_error(parse_flags, argv, prog=prog))
