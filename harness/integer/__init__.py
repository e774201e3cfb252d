"""Integer deployment: the exported model, its reference executor."""
