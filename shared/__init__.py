"""openrouter-agent core: domain, services, adapters and the web layer of every function."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("openrouter-agent")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
