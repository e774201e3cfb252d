"""Protocols as named suites: one TOML sweep configuration each, shipped with the package (``mpqbench run
--suite NAME``; docs/protocols.md). A suite fixes what a comparison needs held equal (model, data set, recipe,
budgets, seeds, candidate bits); its file's header comment says what and why. Flags given with ``--suite``
override it as they override ``--config``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from mpqbench.errors import UserError


def names() -> list[str]:
    """The shipped suites, sorted."""
    return sorted(p.name[:-len(".toml")] for p in resources.files(__name__).iterdir() if p.name.endswith(".toml"))


def listing() -> str:
    """The suites in one line."""
    return f"suites: {', '.join(names())} (see docs/protocols.md)"


def path(name: str) -> Path:
    """The TOML file of suite ``name``; an unknown name is a one-line UserError that lists the suites."""
    if name not in names():
        raise UserError(f"unknown suite {name!r}; {listing()}")
    return Path(str(resources.files(__name__) / f"{name}.toml"))
