"""The API server process. It never imports ``castray.agent``; it starts agents as processes."""

from castray.server.app import create_app

__all__ = ["create_app"]
