"""Small frozen dataclasses, one per concern, that double as CLI flags and config-file sections.

A training run's configuration is a `RunConfig` holding one dataclass per concern (litgpt's
style): `optim` (the optimizer and its schedule), `loader`, `eval` and `system` (device, precision,
seed, checkpoints), plus the model's own Config (models/). The TOML file has one section per group
(`[run]`, `[optim]`, `[loader]`, `[eval]`, `[system]`, `[model]`); files written before the groups
existed keep everything in `[train]` and are still read.

Every value is validated at this boundary, in one place: types, NaN and infinities, ranges
(`check=` on the field), choices, and relations between fields (`relations()`). A problem is one
line naming the flag (`--lr`), the file and key (`run.toml: [optim] lr`) or the parameter
(`--param lam`), raised as RecscaleError (exit code 2). A field's `help` metadata is its --help text.

fields.py (checks, `option`, `Checked`), prepare.py (PrepareConfig), run.py (RunConfig and its
groups), layers.py (layered resolution), files.py (TOML/YAML files), arguments.py (the argparse
bridge).
"""
