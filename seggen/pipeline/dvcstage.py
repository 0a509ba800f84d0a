"""The foreach / matrix item of the DVC stage this process runs as.

A `dvc.yaml` command names its stage's arm, split, regime or variant as a template --
`seggen evaluate --arm '{item.arm}' --split '{item.split}'` -- not as DVC's `${item.arm}`: DVC would
put the value into the shell command line, where a name from the params such as `a$(id)` would run.
seggen fills the template itself from `$DVC_STAGE`, which DVC sets for every stage command (e.g.
`evaluate@baseline-validation`; the path before a `:` is relative to where DVC was started, so it is
not used). The stage is looked up in the dvc.yaml beside the params file (DVC's own convention: a
dvc.yaml reads the params.yaml of its folder): its `foreach` / `matrix` is resolved in the params,
and the item whose generated name is the stage's is found, named exactly as DVC names them
(dvc.parsing: a mapping iterates its keys, a list its values, a matrix joins its fragments with "-").
"""

from __future__ import annotations

import functools
import itertools
import os
import re
from pathlib import Path
from typing import Any

from seggen.errors import ConfigError
from seggen.io import load_yaml

FIELD = re.compile(r"\{(key|item(?:\.[A-Za-z_]\w*)*)\}")
REFERENCE = re.compile(r"^\$\{\s*([\w.-]+)\s*\}$")


@functools.lru_cache(maxsize=4)
def _load(text: str) -> Any:
    return load_yaml(text)  # read-only here; cached for callers that fill many stages in one process


def is_template(value: str | None) -> bool:
    return value is not None and "{" in value


def _str(v: Any) -> str:
    """DVC's to_str: booleans as YAML writes them."""
    return ("true" if v else "false") if isinstance(v, bool) else str(v)


def _resolve(value: Any, tree: dict, where: str) -> Any:
    """A foreach / matrix value: a `${dotted.key}` reference into the params, or a literal list / dict."""
    if isinstance(value, str):
        m = REFERENCE.match(value.strip())
        if not m:
            raise ConfigError(f"{where}: {value!r} is neither a list nor a ${{params key}} reference")
        node: Any = tree
        for k in m.group(1).split("."):
            if not isinstance(node, dict) or k not in node:
                raise ConfigError(f"{where}: {value} names no key of the params")
            node = node[k]
        return node
    return value


def _members(value: Any, matrix_key: str | None = None) -> list[tuple[str, Any]]:
    """(name fragment, item) pairs, as DVC generates them. foreach (no matrix_key): a mapping's item is
    its value ({key} its key), a list holding lists or mappings is named by index; a matrix entry: a
    mapping's item is its key, a list or mapping inside a list is named KEY + index."""
    if isinstance(value, dict):
        return [(_str(k), k if matrix_key else v) for k, v in value.items()]
    if not isinstance(value, list):
        raise ConfigError(f"expected a list or a mapping to iterate over, got {type(value).__name__}")
    if matrix_key is not None:
        return [(f"{matrix_key}{i}" if isinstance(v, (dict, list)) else _str(v), v) for i, v in enumerate(value)]
    if any(isinstance(v, (dict, list)) for v in value):
        return [(str(i), v) for i, v in enumerate(value)]
    return [(_str(v), v) for v in value]


def stage_item(stage: str, tree: dict, dvcfile: Path) -> dict[str, Any]:
    """{"key": ..., "item": ...} of the stage `[PATH:]GROUP@KEY` (DVC_STAGE) of `dvcfile`."""
    group, at, key = stage.rpartition(":")[2].partition("@")
    where = f"DVC_STAGE={stage}"
    if not at:
        raise ConfigError(f"{where}: not a foreach / matrix stage, so it has no item to fill a template with")
    try:
        stages = (_load(dvcfile.read_text()) or {}).get("stages", {})
    except (OSError, ValueError) as e:
        raise ConfigError(f"{where}: cannot read {dvcfile} ({e})") from None
    definition = stages.get(group) if isinstance(stages, dict) else None
    if not isinstance(definition, dict):
        raise ConfigError(f"{where}: {dvcfile} has no stage {group!r}")
    if "foreach" in definition:
        members = _members(_resolve(definition["foreach"], tree, f"{dvcfile}: {group}.foreach"))
        for fragment, member in members:
            if fragment == key:
                return {"key": key, "item": member}
    elif "matrix" in definition:
        matrix = {
            k: _members(_resolve(v, tree, f"{dvcfile}: {group}.matrix.{k}"), k) for k, v in definition["matrix"].items()
        }
        for combination in itertools.product(*matrix.values()):
            if "-".join(fragment for fragment, _ in combination) == key:
                return {"key": key, "item": dict(zip(matrix, (member for _, member in combination)))}
    else:
        raise ConfigError(f"{where}: stage {group!r} of {dvcfile} has neither foreach nor matrix")
    raise ConfigError(f"{where}: no item of {group!r} in {dvcfile} is named {key!r} with these params")


def expand(template: str, option: str, tree: dict, dvcfile: Path) -> str:
    """`template` with its {key} / {item.FIELD} filled from the DVC stage of `dvcfile` this process runs as."""
    stage = os.environ.get("DVC_STAGE")
    if not stage:
        raise ConfigError(
            f"{option} {template}: a stage template, filled from the DVC stage that runs it (DVC_STAGE is not set: "
            "run it through `dvc repro`, or give the value itself)"
        )
    found = stage_item(stage, tree, dvcfile)

    def fill(m: re.Match) -> str:
        node: Any = found
        for k in m.group(1).split("."):
            if not isinstance(node, dict) or k not in node:
                raise ConfigError(f"{option} {template}: {{{m.group(1)}}} is not a field of DVC stage {stage}")
            node = node[k]
        return _str(node)

    out = FIELD.sub(fill, template)
    if "{" in out or "}" in out:
        raise ConfigError(f"{option} {template}: only {{key}} and {{item.FIELD}} can be filled")
    return out
