"""The ``castray`` command: ``serve`` runs the service; the other commands talk to one."""

from castray.cli.main import app, main

__all__ = ["app", "main"]
