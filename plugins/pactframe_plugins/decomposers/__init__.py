"""Built-in decomposers."""
