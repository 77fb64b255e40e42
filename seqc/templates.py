"""Jinja2 for the backends: templates only loop and substitute; expressions are rendered in Python."""
from __future__ import annotations

from functools import lru_cache

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from .resources import resource_dir


@lru_cache(maxsize=None)
def environment(backend: str) -> Environment:
    return Environment(loader=FileSystemLoader(str(resource_dir("backends") / backend)),
                       undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                       keep_trailing_newline=True, autoescape=False)


def render(backend: str, template: str, **context) -> str:
    return environment(backend).get_template(template).render(**context)
