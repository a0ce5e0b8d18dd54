"""Presets: named sets of conventions that reproduce a publication, under explicit options."""

from __future__ import annotations

from actgeom.core.base.errors import OptionError


def resolve(options_class, presets: dict[str, dict], preset: str | None, given: dict):
    """``options_class`` from its defaults, then the preset's conventions, then every option
    given explicitly (not None): an option the user typed always wins over a preset."""
    if preset is not None and preset not in presets:
        raise OptionError("preset", preset, f"is not one of {', '.join(presets)}")
    chosen = dict(presets.get(preset, {}))
    chosen.update({key: value for key, value in given.items() if value is not None})
    return options_class(preset=preset, **chosen)
