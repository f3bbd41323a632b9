"""Built-in spec kinds, one module per kind. Each imports its heavy packages only in build()."""
