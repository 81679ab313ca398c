"""lenet: LeNet-5 written from scratch in NumPy, with CuPy as a drop-in GPU backend."""

__version__ = "0.1.0"

from .checkpoint import load_weights  # noqa: E402
from .errors import LenetError  # noqa: E402
from .model import LeNet5  # noqa: E402

__all__ = ["LeNet5", "LenetError", "__version__", "load_weights"]
