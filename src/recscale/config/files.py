"""Config files (TOML, or YAML): one section per group (`[run]`, `[optim]`, `[loader]`, `[eval]`,
`[system]`, `[model]`); files written before the groups existed keep everything in `[train]` and
are still read. config.toml, written by `recscale train`, records what a run used.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Mapping

from recscale.config.layers import Layer
from recscale.config.run import GROUPS
from recscale.errors import RecscaleError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


LEGACY_SECTION = "train"   # before the groups: every run setting in one [train] section


MODEL_SECTION = "model"


MOVED_TO_MODEL = ("pretrained_gmf", "pretrained_mlp")  # were [train] settings, now NCF model settings


RECORD_SECTION = "dataset"  # written by `recscale train` into config.toml: which dataset the run used
# also written into config.toml: what this machine resolved of the settings left to "auto" (the
# loading mode and the memory budget). The run itself reads it back (a resumed run shuffles in the
# same windows); as a --config file it is left out, so another machine resolves "auto" again.
MACHINE_SECTION = "machine"


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML (or, with PyYAML installed, YAML) config file into a dict of sections."""
    path = Path(path)
    try:
        text = path.read_bytes()
    except IsADirectoryError:
        raise RecscaleError(f"{path}: is a directory, expected a config file") from None
    except OSError as exc:
        raise RecscaleError(f"{path}: cannot read config file: {exc.strerror}") from None
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as exc:
            raise RecscaleError(f"{path}: YAML config needs PyYAML (pip install pyyaml), or use TOML") from exc
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise RecscaleError(f"{path}: invalid YAML: {str(exc).splitlines()[0]}") from None
    else:
        try:
            data = tomllib.loads(text.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise RecscaleError(f"{path}: invalid TOML: {exc}") from None
    if not isinstance(data, dict):
        raise RecscaleError(f"{path}: top level must be a table of sections")
    return data


def run_layers(sections: Mapping[str, Any], source: str) -> tuple[list[Layer], Layer]:
    """The run-setting layers and the model layer of a config file's sections. Unknown sections
    are errors; a legacy [train] section is routed key by key (pretrained_* to [model])."""
    known = ("run", *GROUPS, MODEL_SECTION, RECORD_SECTION, MACHINE_SECTION, LEGACY_SECTION)
    layers: list[Layer] = []
    model: dict[str, Any] = {}
    for section, body in sections.items():
        if section not in known:
            raise RecscaleError(f"{source}: unknown section [{section}] (known: {', '.join(known[:-1])})")
        if not isinstance(body, dict):
            raise RecscaleError(f"{source}: [{section}] must be a table of settings")
        if section in (RECORD_SECTION, MACHINE_SECTION):
            continue  # what a run's config.toml records about its dataset and machine; not a setting
        if section == MODEL_SECTION:
            model.update(body)
        elif section == LEGACY_SECTION:
            model.update({k: v for k, v in body.items() if k in MOVED_TO_MODEL})
            layers.append(Layer({k: v for k, v in body.items() if k not in MOVED_TO_MODEL}, source, "key", ""))
        else:
            layers.append(Layer(body, source, "key", section))
    return layers, Layer(model, source, "key", MODEL_SECTION)


def to_toml(sections: Mapping[str, Any]) -> str:
    """A two-level mapping of sections as TOML, by a real TOML writer (tomli-w): any string, with
    quotes, backslashes or newlines, reads back as it was written. None values are left out."""
    import tomli_w
    return tomli_w.dumps({section: {k: list(v) if isinstance(v, tuple) else v for k, v in body.items() if v is not None}
                          for section, body in sections.items()})
