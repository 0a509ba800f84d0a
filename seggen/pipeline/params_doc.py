"""The params reference, from the one place it is written: the pydantic fields of seggen/config/
(their docstrings, types and bounds, through the JSON schema the Prefect form also renders).

`seggen params describe [KEY]` prints it with the values a command sees; docs/params.md is the same
table with the code defaults (`seggen params describe --markdown`, checked by tests/test_structure.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from seggen.config import Params


@dataclass(frozen=True)
class Row:
    key: str  # dotted
    kind: str  # type and bounds, e.g. "int >= 1"
    value: Any  # the params' value (a section: None)
    description: str
    section: bool = False


def _resolve(node: dict, defs: dict) -> dict:
    while "$ref" in node:
        node = {**defs[node["$ref"].rsplit("/", 1)[-1]], **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _kind(node: dict, defs: dict) -> str:
    node = _resolve(node, defs)
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        nullable = len(options) < len(node["anyOf"])
        inner = " or ".join(_kind(o, defs) for o in options)
        return f"{inner} or null" if nullable else inner
    if "enum" in node or "const" in node:
        return "one of " + ", ".join(str(v) for v in node.get("enum", [node.get("const")]))
    t = node.get("type")
    if t == "array":
        if "prefixItems" in node:
            return "[" + ", ".join(_kind(i, defs) for i in node["prefixItems"]) + "]"
        item = node.get("items")
        return f"list of {_kind(item, defs)}" if item else "list"
    if t == "object":
        if "properties" in node:
            return "section"
        extra = node.get("additionalProperties")
        return f"mapping of {_kind(extra, defs)}" if isinstance(extra, dict) and extra else "mapping"
    kind = {"integer": "int", "number": "float", "string": "str", "boolean": "bool"}.get(t, t or "any")
    if node.get("format") == "path":
        kind = "path"
    bounds = [
        f"{op} {node[k]}"
        for k, op in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<"))
        if k in node
    ]
    bounds += [f"{n} items" for n in [node.get("minItems")] if n]
    return f"{kind} {', '.join(bounds)}".strip()


def _one_line(text: str | None) -> str:
    return " ".join((text or "").split())


def rows(params: Params | None = None) -> Iterator[Row]:
    """Every section and field of the params, in schema order, with `params`' values (code defaults
    if None)."""
    params = params or Params()
    schema = Params.model_json_schema()
    defs = schema.get("$defs", {})
    yield from _walk(schema, defs, params.model_dump(mode="json"), "")


def _walk(node: dict, defs: dict, values: Any, prefix: str) -> Iterator[Row]:
    node = _resolve(node, defs)
    for name, prop in node.get("properties", {}).items():
        key = prefix + name
        target = _resolve(prop, defs)
        value = values.get(name) if isinstance(values, dict) else None
        desc = _one_line(prop.get("description") or target.get("description"))
        if "properties" in target:
            yield Row(key, "section", None, desc, section=True)
            yield from _walk(target, defs, value, key + ".")
        else:
            yield Row(key, _kind(prop, defs), value, desc)


def _value(v: Any) -> str:
    return json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else v


def describe(params: Params | None = None, key: str | None = None) -> str:
    """Plain text for the terminal: KEY (type) = value, then its description."""
    out = []
    for r in rows(params):
        if key and not (r.key == key or r.key.startswith(key + ".")):
            continue
        head = f"{r.key}  [{r.kind}]" if r.section else f"{r.key} = {_value(r.value)}  [{r.kind}]"
        out.append(head + (f"\n    {r.description}" if r.description else ""))
    return "\n".join(out)


def markdown() -> str:
    """docs/params.md: every key with its type, bounds, code default and description; each section's
    own keys in one table, its sub-sections after it."""
    all_rows = list(rows())
    sections = [Row("", "section", None, _one_line(Params.__doc__), section=True)]
    sections += [r for r in all_rows if r.section]
    parent = lambda key: key.rsplit(".", 1)[0] if "." in key else ""  # noqa: E731
    cell = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = [
        "# params.yaml reference",
        "",
        "`params.yaml` is the one source of parameters for the CLI, `dvc.yaml` and the Prefect flows. The",
        "pydantic models of `seggen/config/` validate it: an unknown key or a bad value stops the command with",
        "one line naming the key, before anything is written:",
        "",
        "```",
        "$ seggen --set data.benchmark.resolution=8 prepare",
        "error: --set data.benchmark.resolution: Input should be greater than or equal to 32 (got 8)",
        "```",
        "",
        "Override values for one run with `--set KEY=VALUE` (repeatable), or use another file with `--params",
        "FILE` (a profile: `extends:` a base file and states only what differs). With DVC: `dvc exp run -S",
        "data.benchmark.num_train=2000`. `seggen params describe [KEY]` shows the values a command sees.",
        "",
        "This page is generated from the fields of `seggen/config/` (`seggen params describe --markdown`); the",
        "Prefect deployments' forms show the same descriptions. Defaults are the code's; the project's",
        "`params.yaml` sets some differently.",
    ]
    for sec in sections:
        own = [r for r in all_rows if not r.section and parent(r.key) == sec.key]
        title = f"`{sec.key}`" if sec.key else "Top level"
        lines += ["", f"{'#' * min(2 + sec.key.count('.'), 6)} {title}", ""]
        if sec.description:
            lines += [sec.description, ""]
        if not own:
            lines.append("(sub-sections only)")
            continue
        lines += ["| key | type | default | description |", "|---|---|---|---|"]
        for r in own:
            lines.append(f"| `{r.key}` | {cell(r.kind)} | `{cell(_value(r.value))}` | {cell(r.description)} |")
    return "\n".join(lines) + "\n"
