"""Plugin parameters on the command line: ``name:key=value:key=value``.

Values are typed by the plugin's declared default (bool, int, float, str, a tuple of ints written ``4/8``
or as a range ``2-8``, None for an optional number, or a :class:`Choice`). Unknown keys, ill-typed values
and values outside a choice are user errors, caught before any run starts.
"""

from __future__ import annotations

from typing import Any, Mapping

from mpqbench.errors import UserError


class Choice(tuple):
    """A parameter taking one of a fixed set of strings; the first is the default."""

    def __new__(cls, *values: str):
        return super().__new__(cls, values)


def resolve_defaults(params: Mapping[str, Any]) -> dict[str, Any]:
    """Declared parameters with each :class:`Choice` replaced by its default."""
    return {k: v[0] if isinstance(v, Choice) else v for k, v in params.items()}


def split_component(text: str) -> tuple[str, dict[str, str]]:
    """``ompq:beta=1:candidates=2-8`` -> ("ompq", {"beta": "1", "candidates": "2-8"})."""
    name, *pairs = text.strip().split(":")
    raw = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key.strip():
            raise UserError(f"malformed parameter {pair!r} in {text!r}: write name:key=value")
        raw[key.strip()] = value.strip()
    if not name.strip():
        raise UserError(f"missing name in {text!r}")
    return name.strip(), raw


def _int_tuple(value: str) -> tuple[int, ...]:
    if "-" in value and "/" not in value:
        lo, hi = (int(v) for v in value.split("-", 1))
        return tuple(range(lo, hi + 1))
    return tuple(int(v) for v in value.split("/"))


def coerce(owner: str, declared: Mapping[str, Any], raw: Mapping[str, Any]) -> dict[str, Any]:
    """Declared defaults overridden by ``raw`` (strings from the CLI, or already-typed values from TOML)."""
    out = resolve_defaults(declared)
    for key, value in raw.items():
        if key not in declared:
            known = ", ".join(declared) or "none"
            raise UserError(f"{owner} has no parameter {key!r} (parameters: {known})")
        default = declared[key]
        if isinstance(default, Choice):
            if value not in default:
                raise UserError(f"{owner}: {key}={value!r} is not one of {', '.join(default)}")
            out[key] = value
            continue
        try:
            if not isinstance(value, str):
                out[key] = tuple(value) if isinstance(default, tuple) else value
            elif isinstance(default, bool):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                out[key] = value.lower() in ("true", "1", "yes")
            elif isinstance(default, tuple):
                out[key] = _int_tuple(value)
            elif default is None:  # an optional number
                out[key] = None if value.lower() == "none" else _number(value)
            else:
                out[key] = type(default)(value)
        except (TypeError, ValueError):
            what = {bool: "true or false", tuple: "a list of integers (4/8 or 2-8)", int: "an integer",
                    float: "a number", str: "a string", type(None): "a number or none"}[type(default)]
            raise UserError(f"{owner}: parameter {key}={value!r} is not {what}") from None
    return out


def _number(value: str) -> int | float:
    try:
        return int(value)
    except ValueError:
        return float(value)


def changed(params: Mapping[str, Any], defaults: Mapping[str, Any]) -> list[str]:
    """``key=value`` for every parameter that differs from its (resolved) default."""
    defaults = resolve_defaults(defaults)
    return [f"{k}={_fmt(v)}" for k, v in params.items() if defaults.get(k) != v]


def label(name: str, params: Mapping[str, Any], defaults: Mapping[str, Any]) -> str:
    """``ompq(beta=1)``: the name plus every parameter that differs from its default."""
    diff = changed(params, defaults)
    return f"{name}({','.join(diff)})" if diff else name


def describe(declared: Mapping[str, Any]) -> str:
    """``beta=10, bn=eval|train``: declared parameters with their defaults (a choice lists its values)."""
    return ", ".join(f"{k}={'|'.join(v) if isinstance(v, Choice) else _fmt(v)}" for k, v in declared.items())


def _fmt(value: Any) -> str:
    if isinstance(value, tuple):
        return "/".join(str(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)
