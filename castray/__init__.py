"""CastRay: move files and messages between the nodes of Ray clusters."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("castray")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
