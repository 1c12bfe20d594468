"""pactframe's built-in components.

Each module holds one algorithm and one two-line hook implementation; the
modules are registered through the ``pactframe`` entry-point group in
pyproject.toml, exactly as a third-party plugin would be.
"""
