"""lenet: LeNet-5 written from scratch in NumPy, with CuPy as a drop-in GPU backend."""

from .checkpoint import load_weights
from .errors import LenetError
from .model import LeNet5
from .version import __version__

__all__ = ["LeNet5", "LenetError", "__version__", "load_weights"]
