"""``python -m minidock`` is the ``minidock`` command."""

from minidock.cli import main

main()
