"""phi4ray: the Phi-4 training recipe as a Ray-distributed system."""

__version__ = "0.1.0"
