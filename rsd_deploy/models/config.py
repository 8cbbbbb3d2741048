"""Models that record their own configuration (as diffusers' ``register_to_config``)."""

from __future__ import annotations

import functools
import inspect


def records_config(init):
    """Decorate ``__init__`` so the model keeps its named constructor arguments, defaults filled
    in, as ``self.config``: what is saved beside its weights and rebuilds it. Extra keyword
    arguments (an official YAML's keys the model ignores) are not recorded."""
    signature = inspect.signature(init)
    named = [p.name for p in signature.parameters.values() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)][1:]

    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        init(self, *args, **kwargs)
        self.config = {name: _plain(bound.arguments[name]) for name in named}

    return wrapper


def _plain(value):
    """Tuples as lists: the config must survive a JSON round trip unchanged."""
    return list(value) if isinstance(value, tuple) else value
