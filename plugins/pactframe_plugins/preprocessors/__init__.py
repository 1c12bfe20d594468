"""Built-in preprocessors."""
