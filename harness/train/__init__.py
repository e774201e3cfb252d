"""Training: recipes, the shared training loop that methods extend (parameter groups, validation-split
steps, named loss terms, step callbacks), reusable loss terms (distillation), and cached FP32 checkpoints."""
