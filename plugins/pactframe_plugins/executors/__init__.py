"""Built-in executors: where the work units of a merge run (docs/executors.md)."""
