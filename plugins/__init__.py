"""Built-in method and target plugins."""
