"""The configuration reference, generated from the JSON schema (torch-free).

The schema (``schemas/config.schema.yaml``, with the registered pruning methods filled in by
:func:`llm_compression.config.load_schema`) is the one source of every key's meaning, type, default and
allowed values; :func:`config_reference_markdown` turns it into the documentation site's reference page
(a MkDocs hook calls it at build time, so the page cannot drift from the schema).
"""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class SchemaKey:
    """One key of the config: its dotted path (``[]`` = each list item, ``<name>`` = any name of a mapping),
    its type, default (JSON text, empty = none), allowed values, whether it is required, and its description."""

    path: str
    type: str
    default: str
    allowed: str
    required: bool
    description: str


def _type_of(node: dict) -> str:
    if "enum" in node:
        kinds = sorted({type(v).__name__ for v in node["enum"] if v is not None}
                       | ({"null"} if None in node["enum"] else set()))
        return " \\| ".join(k.replace("str", "string").replace("NoneType", "null") for k in kinds)
    t = node.get("type")
    if isinstance(t, list):
        return " \\| ".join(t)
    if t:
        return t
    for key in ("oneOf", "anyOf"):
        if key in node:
            return " \\| ".join(dict.fromkeys(_type_of(n) for n in node[key]))
    return "any"


def _allowed(node: dict) -> str:
    parts = []
    if "enum" in node:
        parts.append(", ".join(f"`{json.dumps(v)}`" for v in node["enum"]))
    for k, sym in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<")):
        if k in node:
            parts.append(f"{sym} {node[k]}")
    if "pattern" in node:
        parts.append(f"pattern `{node['pattern']}`")
    if "minItems" in node:
        parts.append(f"at least {node['minItems']} item(s)")
    items = node.get("items")
    if isinstance(items, dict) and "enum" in items:
        parts.append("each one of " + ", ".join(f"`{json.dumps(v)}`" for v in items["enum"]))
    return "; ".join(parts)


def _description(node: dict) -> str:
    text = " ".join(str(node.get("description", "")).split())
    alternatives = node.get("oneOf") or node.get("anyOf")
    if alternatives:
        alt = [" ".join(str(a.get("description", "")).split()) for a in alternatives if a.get("description")]
        if alt:
            text = (text + " " if text else "") + "One of: " + "; ".join(alt)
    return text.replace("|", "\\|")


def schema_keys(schema: dict, prefix: str = "") -> list[SchemaKey]:
    """Every key of ``schema`` (a JSON-schema object node), depth first, in the schema's order."""
    out = []
    required = set(schema.get("required", []))
    for name, node in (schema.get("properties") or {}).items():
        path = f"{prefix}{name}"
        default = json.dumps(node["default"]) if "default" in node else ""
        out.append(SchemaKey(path, _type_of(node), default, _allowed(node), name in required, _description(node)))
        out += _children(node, path)
    return out


def _children(node: dict, path: str) -> list[SchemaKey]:
    out = []
    if node.get("properties"):
        out += schema_keys(node, path + ".")
    extra = node.get("additionalProperties")
    if isinstance(extra, dict) and (extra.get("properties") or extra.get("type") == "object"):
        out += schema_keys(extra, path + ".<name>.")
    items = node.get("items")
    if isinstance(items, dict) and items.get("properties"):
        out += schema_keys(items, path + "[].")
    for alt in node.get("oneOf") or node.get("anyOf") or []:
        if isinstance(alt, dict) and alt.get("properties"):
            out += schema_keys(alt, path + ".")
        elif isinstance(alt, dict) and isinstance(alt.get("items"), dict) and alt["items"].get("properties"):
            out += schema_keys(alt["items"], path + "[].")
    seen, unique = set(), []
    for k in out:  # a key reached through two alternatives is listed once
        if k.path not in seen:
            seen.add(k.path)
            unique.append(k)
    return unique


RECIPE_PREFIX = "healing.<name>."


def _with_recipe_default(key: SchemaKey) -> SchemaKey:
    """A healing recipe key with the default that :func:`llm_compression.options.healing.normalize_recipe` fills
    in (the schema leaves recipe defaults to it, so a recipe is normalized in one place)."""
    if key.default or not key.path.startswith(RECIPE_PREFIX):
        return key
    from .options.healing import DEFAULTS

    value = DEFAULTS
    for part in key.path[len(RECIPE_PREFIX):].split("."):
        if not isinstance(value, dict) or part not in value:
            return key
        value = value[part]
    if isinstance(value, dict):
        return key
    return SchemaKey(key.path, key.type, json.dumps(value), key.allowed, key.required, key.description)


def config_reference_markdown(schema: dict | None = None) -> str:
    """The reference page: one section per top-level key, one table row per key below it.

    Args:
        schema: a loaded schema; default: the package's, with the registered pruning methods
            (:func:`llm_compression.config.load_schema`).
    """
    if schema is None:
        from .config import load_schema

        schema = load_schema()
    keys = [_with_recipe_default(k) for k in schema_keys(schema)]
    lines = ["<!-- generated from the JSON schema by llm_compression.config_reference; edit the schema -->", ""]
    if schema.get("description"):
        lines += [" ".join(schema["description"].split()), ""]
    top_required = set(schema.get("required", []))
    for top in schema.get("properties", {}):
        rows = [k for k in keys if k.path == top or k.path.startswith((top + ".", top + "["))]
        head = rows[0]
        lines += [f"## `{top}`", ""]
        if head.description:
            lines += [head.description, ""]
        lines += [f"Type: {head.type}" + (f"; default `{head.default}`" if head.default else "")
                  + ("; **required**" if top in top_required else "")
                  + (f"; allowed: {head.allowed}" if head.allowed else ""), ""]
        if len(rows) > 1:
            lines += ["| key | type | default | allowed | description |", "|---|---|---|---|---|"]
            for k in rows[1:]:
                name = f"`{k.path}`" + (" (required)" if k.required else "")
                default = f"`{k.default}`" if k.default else ""
                lines.append(f"| {name} | {k.type} | {default} | {k.allowed} | {k.description} |")
            lines.append("")
    return "\n".join(lines)
