"""lenet's version, in a module of its own: the package's modules (checkpoint.py writes it into every file) and
pyproject.toml read it here without importing lenet/__init__.py, which imports them."""

__version__ = "0.1.0"
