"""The application layer: serve a run directory over HTTP."""
