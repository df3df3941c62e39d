"""The `lens-hub` command line: one module per command group, each adding its commands to `app`."""

# isort: off
# Importing a group registers its commands; --help lists them in this order.
from . import training, lenses, registry, explore  # noqa: F401

# isort: on
from .app import app, main

__all__ = ["app", "main"]
