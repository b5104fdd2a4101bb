"""mome: audio-visual speech recognition with a Mixture of Matryoshka Experts.

Kept free of heavy imports so that ``mome --help`` and shell completion stay instant.
"""

__version__ = "0.1.0"
