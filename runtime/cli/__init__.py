"""Command-line interface; see ``sealinfer --help``."""
