"""``python -m eediff ...`` is the ``eediff`` command."""

from .cli import main

main()
