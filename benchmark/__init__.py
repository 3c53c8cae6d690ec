"""clipbench: a benchmark harness for continual learning of CLIP models.

Importing this package runs nothing: no downloads, no CUDA initialisation, no plugin discovery.
"""

__version__ = "0.1.0"
