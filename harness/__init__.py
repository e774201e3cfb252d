"""mpqbench: a reference benchmark for mixed-precision quantization (MPQ) methods.

Plugins import ``hookimpl`` from here; everything else lives in submodules named for what it does.
"""

from mpqbench.plugin.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["hookimpl", "__version__"]
