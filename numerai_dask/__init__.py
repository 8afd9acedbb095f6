"""numerai-dask: score a Numerai-style tournament at scale on Dask."""

__version__ = "0.2.0"
