"""sne: learn properties of neural networks from their weights alone."""

__version__ = "0.1.0"
