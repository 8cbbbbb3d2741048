"""rsd-deploy: export, optimize, benchmark and serve RSD / ResShift / SinSR x4 super-resolution."""

__version__ = "0.1.0"
