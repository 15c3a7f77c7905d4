"""Dotted-key overrides for the tiny test configs: `apply(c, {"data.holdout": 8})` sets
`c.data.holdout`, as `--config.data.holdout=8` would on the command line."""


def apply(config, overrides: dict):
  for key, value in overrides.items():
    target = config
    *parents, leaf = key.split(".")
    for parent in parents:
      target = target[parent]
    target[leaf] = value
  return config
