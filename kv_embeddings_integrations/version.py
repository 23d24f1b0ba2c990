"""The package version (a module of its own, so front ends need not import the package root)."""

__version__ = "0.1.0"
