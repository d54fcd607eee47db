"""A method's options: the bounds checks its frozen config makes in ``__post_init__``, and building
the config from user options with one error for every way they can be wrong. Shared by the drafters
(``paradec.drafters``), the diffusion decoders (``paradec.diffusion``) and the trainers' configs (``paradec.train``)."""

from __future__ import annotations

import dataclasses

from .errors import ParadecError


def check_int(config, name: str, low: int, high: int, *, optional: bool = False) -> None:
    """Raise a ValueError naming the option unless it is an integer in [low, high] (or None if optional)."""
    value = getattr(config, name)
    if optional and value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        default = " (or null for the default)" if optional else ""
        raise ValueError(f"{name} must be an integer in [{low}, {high}]{default}, got {value!r}")


def check_number(config, name: str, low: float, high: float, *, optional: bool = False,
                 below_high: bool = False) -> None:
    """Raise a ValueError naming the option unless it is a number in [low, high] ([low, high) if
    ``below_high``; None allowed if optional)."""
    value = getattr(config, name)
    if optional and value is None:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high
    if not ok or (below_high and value == high):
        default = " (or null for the default)" if optional else ""
        end = ")" if below_high else "]"
        raise ValueError(f"{name} must be a number in [{low}, {high}{end}{default}, got {value!r}")


def check_bool(config, name: str) -> None:
    value = getattr(config, name)
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")


PATH = {"path": True}  # field metadata of an option that names a file or a model on this machine


def path_options(config_cls) -> frozenset[str]:
    """The options of a config that name a file or a model (fields with ``metadata=PATH``): a server
    never takes them from a request, which could otherwise make it open (and tell about) any file."""
    return frozenset(f.name for f in dataclasses.fields(config_cls) if f.metadata.get("path"))


def build_config(config_cls, method: str, options: dict):
    """``config_cls(**options)``, with unknown options and failed checks as user errors naming ``method``."""
    fields = {f.name for f in dataclasses.fields(config_cls)}
    unknown = set(options) - fields
    if unknown:
        allowed = ", ".join(sorted(fields)) or "none"
        raise ParadecError(f"method '{method}' has no option(s) {', '.join(sorted(unknown))}; its options: {allowed}")
    try:
        return config_cls(**options)
    except (TypeError, ValueError) as exc:
        raise ParadecError(f"bad option for method '{method}': {exc}") from exc
