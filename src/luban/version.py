"""The one version string: pyproject.toml, `luban --version`, run manifests and the server read it."""

__version__ = "0.1.0"
