"""Command-line entry points of the core package (``rsd-upscale``)."""
