"""Reading and writing params files: YAML 1.2 as DVC reads it, `extends` (a profile states only what
differs), `--set` overrides, one-line errors naming the file and key, and writes that keep comments."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError
from ruamel.yaml.error import YAMLError

from seggen.config.schema import Params
from seggen.errors import ConfigError, not_found

DEFAULT_PARAMS = Path("params.yaml")


def _yaml_load(text: str) -> Any:
    """YAML 1.2, as DVC reads and writes params.yaml (`dvc exp run -S` writes `no` unquoted: a string
    in YAML 1.2, a boolean to a YAML 1.1 reader such as PyYAML)."""
    from ruamel.yaml import YAML

    return YAML(typ="safe", pure=True).load(text)


def _format_error(
    source: str, err: ValidationError, overrides: dict[str, Any] | None = None, override_source: str = "--set"
) -> str:
    """One line for all errors; each names its dotted key, and where the value came from when that was
    an override rather than the file."""
    parts = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif "input" in e and not isinstance(e["input"], (dict, list)):
            msg = f"{msg} (got {e['input']!r})"
        origin = _override_origin(key if e["loc"] else "", overrides, override_source)
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
            if not e["loc"]:  # a model validator's message names its key
                parts.append(f"{origin}: {msg}" if origin else msg)
                continue
        parts.append(f"{origin} {key}: {msg}" if origin else f"{key}: {msg}")
    if overrides and all(p.startswith(override_source) for p in parts):
        return "; ".join(parts)
    return f"{source}: " + "; ".join(parts)


def _override_origin(key: str, overrides: dict[str, Any] | None, label: str) -> str:
    """`label` when the offending key (or a section holding it) was set by an override, else ''."""
    for k in overrides or {}:
        if key and (key == k or key.startswith(k + ".") or k.startswith(key + ".")):
            return label
    return ""


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        child = node.setdefault(k, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: {dotted}: {k} is not a section")
        node = child
    node[keys[-1]] = value


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """`key.sub=value` strings (values parsed as YAML scalars) -> {dotted key: value}."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set {item}: expected KEY=VALUE, e.g. data.benchmark.resolution=96")
        key, raw = item.split("=", 1)
        if not key.strip() or any(not part for part in key.strip().split(".")):
            raise ConfigError(f"--set {item}: expected KEY=VALUE with a dotted key, e.g. data.benchmark.resolution=96")
        try:
            out[key.strip()] = _yaml_load(raw) if raw != "" else ""
        except YAMLError as e:
            raise ConfigError(f"--set {item}: value is not valid YAML ({e.__class__.__name__})") from None
    return out


def _read_tree(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The mapping in a params file; a file with `extends: BASE` (relative to it) is BASE's mapping with
    its own keys merged in -- a profile states only what differs (profiles/*.yaml)."""
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, not a params file")
    if not path.exists():
        raise ConfigError(not_found(path, "file", "params"))
    try:
        loaded = _yaml_load(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} not valid YAML: {getattr(e, 'problem', e)}") from None
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(loaded).__name__}")
    base = loaded.pop(EXTENDS, None)
    if base is None:
        return loaded
    if not isinstance(base, str):
        raise ConfigError(f"{path}: {EXTENDS}: expected the path of the params file this one changes")
    base_path = (path.parent / base).resolve()
    if base_path in seen:
        raise ConfigError(f"{path}: {EXTENDS}: {base} extends itself (a cycle)")
    return deep_merge(_read_tree(base_path, seen + (path.resolve(),)), loaded)


EXTENDS = "extends"
# mappings a profile or an override replaces whole: a profile's arms are its arms, its styles its styles
REPLACED_WHOLE = ("arms", "regimes", "variants", "styles")


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` on `base`: mappings merged key by key, anything else replaced; REPLACED_WHOLE mappings
    are replaced whole (a profile's arms are its arms, not added to the base's)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = (
            deep_merge(out[k], v)
            if isinstance(v, dict) and isinstance(out.get(k), dict) and k not in REPLACED_WHOLE
            else v
        )
    return out


def load_params(
    path: str | Path = DEFAULT_PARAMS, overrides: dict[str, Any] | None = None, override_source: str = "--set"
) -> Params:
    """Read and validate params.yaml (or a profile that extends it); a missing params.yaml means all
    defaults. Errors name the file and key, or `override_source` and the key when the bad value came
    from `overrides`."""
    path = Path(path)
    tree: dict[str, Any] = {}
    if path.exists() or path.is_dir() or path != DEFAULT_PARAMS:
        tree = _read_tree(path)
    for key, value in (overrides or {}).items():
        _set_dotted(tree, key, value, override_source)
    try:
        return Params.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_error(str(path), e, overrides, override_source)) from None


def write_params(path: str | Path, changes: dict[str, Any], override_source: str = "--set") -> Params:
    """Validate `changes` (dotted keys) on top of the params file, then write them into it with its
    comments and quoting kept (what `dvc exp run -S` does), atomically. Returns the new params."""
    import io

    from ruamel.yaml import YAML

    from seggen.io import write_text

    path = Path(path)
    loaded = load_params(path, changes, override_source)  # raises naming the key if a value is bad
    if not changes:
        return loaded
    yaml = YAML()  # round trip ("no" must stay quoted for YAML 1.1 readers)
    yaml.preserve_quotes = True
    yaml.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    doc = yaml.load(path.read_text()) if path.exists() else {}
    for key, value in changes.items():
        *parents, last = key.split(".")
        node = doc
        for k in parents:
            node = node.setdefault(k, {})
        node[last] = value
    buf = io.StringIO()
    yaml.dump(doc, buf)
    write_text(path, buf.getvalue())
    return loaded


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; REPLACED_WHOLE mappings stay whole."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and k not in REPLACED_WHOLE:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def profile_changes(profile: str | Path) -> dict[str, Any]:
    """The dotted keys a profile (a params file with `extends`) sets, with their values."""
    path = Path(profile)
    tree = _read_tree(path)
    loaded = _yaml_load(path.read_text())
    if not isinstance(loaded, dict) or EXTENDS not in loaded:
        raise ConfigError(f"{path}: not a profile (no `{EXTENDS}:` naming the params file it changes)")
    own = {k: v for k, v in loaded.items() if k != EXTENDS}
    flat = flatten(own)
    return {k: _get_dotted(tree, k) for k in flat}


def _get_dotted(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for k in dotted.split("."):
        node = node[k]
    return node
