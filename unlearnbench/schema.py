"""JSON Schema checks that name each problem with its key, its value and what is allowed (config files, method
params): the config loader and the method interface both use them, so neither imports the other for them."""

from __future__ import annotations

import contextlib
import json
import math

import jsonschema

from .errors import did_you_mean


def key_path(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _allowed(error) -> str:
    schema = error.schema
    kind = error.validator
    if kind == "enum":
        return "one of " + ", ".join(repr(v) for v in schema["enum"])
    if kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "type"):
        parts = []
        if "type" in schema:
            parts.append(
                "type " + (" or ".join(schema["type"]) if isinstance(schema["type"], list) else schema["type"])
            )
        for k, word in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<")):
            if k in schema:
                parts.append(f"{word} {schema[k]}")
        return ", ".join(parts)
    if kind == "pattern":
        return f"text matching {schema['pattern']}"
    if kind == "additionalProperties":
        return "only the keys " + ", ".join(sorted(schema.get("properties", {})))
    if kind == "required":
        return "the keys " + ", ".join(schema["required"])
    if kind == "uniqueItems":
        return "no repeated entries"
    if kind == "minItems":
        count = schema["minItems"]
        return f"at least {count} {'entry' if count == 1 else 'entries'}"
    return error.message


NUMBER_TYPES = {"number", "integer"}


def types_of(schema: dict) -> set:
    """The JSON types a schema allows."""
    kind = schema.get("type")
    return set(kind if isinstance(kind, list) else [kind] if kind else [])


def coerce(value, schema: dict):
    """Numbers, booleans and null written as text become the type the schema asks for.

    Snakemake's `--config seeds=[0,1]` passes list items as text, and YAML 1.1 (Snakemake's reader) reads 1e-4
    without a dot as text; both are meant as numbers. A value the schema allows as text is left alone.
    """
    if isinstance(value, dict):
        props, extra = schema.get("properties", {}), schema.get("additionalProperties")
        return {k: coerce(v, props.get(k, extra if isinstance(extra, dict) else {})) for k, v in value.items()}
    if isinstance(value, list):
        return [coerce(v, schema.get("items", {})) for v in value]
    types = types_of(schema)
    if isinstance(value, float) and "integer" in types and "number" not in types and value.is_integer():
        return int(value)  # steps: 60.0 -> 60 (range() needs an int)
    if isinstance(value, str) and "null" in types and value.strip() in ("null", "~"):
        return None  # --config reads every value as text: `base={checkpoint: null}` means null, not a folder
    if not isinstance(value, str) or "string" in types:
        return value
    text = value.strip()
    if "boolean" in types and text.lower() in ("true", "false"):
        return text.lower() == "true"
    if "integer" in types:
        with contextlib.suppress(ValueError):
            return int(text)
        with contextlib.suppress(ValueError):  # 1.0e3, which YAML 1.1 reads as text: a whole number all the same
            if (number := float(text)).is_integer():
                return int(number)
    if "number" in types:
        with contextlib.suppress(ValueError):
            number = float(text)
            if math.isfinite(number):
                return number
    return value


def _non_finite(instance, path: tuple = ()):
    """(path, value) of each NaN or inf (YAML's .nan, .inf): a schema bound compared with NaN is False, so passes."""
    if isinstance(instance, dict):
        for key, value in instance.items():
            yield from _non_finite(value, (*path, key))
    elif isinstance(instance, list):
        for i, value in enumerate(instance):
            yield from _non_finite(value, (*path, i))
    elif isinstance(instance, float) and not math.isfinite(instance):
        yield path, instance


def schema_problems(schema: dict, instance, prefix: tuple = ()) -> list[str]:
    """Each way `instance` breaks `schema`, as "'key' = value is not allowed; allowed: ..." (keys under `prefix`)."""
    problems = [
        f"'{key_path([*prefix, *path])}' is {value}; allowed: a finite number" for path, value in _non_finite(instance)
    ]
    for error in sorted(
        jsonschema.Draft202012Validator(schema).iter_errors(instance), key=lambda e: list(map(str, e.path))
    ):
        key = key_path([*prefix, *error.absolute_path])
        if error.validator == "additionalProperties":
            extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
            spaced = " (YAML needs a space after ':', as in {steps: 5})" if any(":" in k for k in extra) else ""
            typo = did_you_mean(extra, error.schema.get("properties", {}))
            problems.append(
                f"unknown key(s) {', '.join(extra)} under '{key}'; allowed: {_allowed(error)}{typo}{spaced}"
            )
        elif "propertyNames" in error.absolute_schema_path:  # the name of a key, not a value, is what breaks it
            problems.append(f"'{key}' has a key {error.instance!r}, which is not allowed; allowed: {_allowed(error)}")
        elif error.validator == "required":
            problems.append(f"'{key}': {error.message}; required: {_allowed(error)}")
        else:
            hint = ""
            value = error.instance
            if error.validator == "type" and "array" in types_of(error.schema) and str(value).lstrip().startswith("["):
                hint = " (its '[' is not closed: [a, b])"  # Snakemake's --config reads an unclosed list as text
            elif (
                error.validator == "type"
                and "array" in types_of(error.schema)
                and isinstance(value, (str, int, float))
                and " " not in str(value)
                and str(value) not in ("", "null", "~")
            ):
                cli = "" if "." in key or "[" in key else f"; on the command line --config {key}=[{error.instance}]"
                hint = f" (a list, even of one: [{error.instance}]{cli})"
            elif error.validator == "type" and types_of(error.schema) == {"string"} and isinstance(value, (int, float)):
                # Snakemake's --config reads 123 as a number even quoted; only a YAML file keeps it text
                cli = "" if "." in key or "[" in key else "; --config cannot give text of digits only"
                hint = f' (text: quote it in a YAML file as {key.rsplit(".", 1)[-1]}: "..."{cli})'
            problems.append(f"'{key}' = {json.dumps(error.instance)} is not allowed; allowed: {_allowed(error)}{hint}")
    return problems
