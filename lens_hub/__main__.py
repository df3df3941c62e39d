"""``python -m lens_hub``: the same command line as ``lens-hub``."""

from .cli import main

main()
