"""openrouter-agent core: domain, services, adapters and the web layer of every function."""

# The single source of the version (pyproject.toml reads it): importlib.metadata would cost
# ~18 ms of every cold start.
__version__ = "0.1.0"
