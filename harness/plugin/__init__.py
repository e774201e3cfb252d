"""The plugin system: hook specifications, the objects plugins register, loading entry points into a
registry, plugin parameters on the command line, and the source fingerprint that enters run ids."""
