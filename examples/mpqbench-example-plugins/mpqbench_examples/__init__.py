"""Example mpqbench plugins, one module per kind, each registered through its own entry point (see
``pyproject.toml``) and walked through in the plugin authors' guide (``docs/plugins.md``)."""

__version__ = "0.1.0"
