"""wheelfarm: a build farm for CUDA PyTorch extension wheels."""

__version__ = "0.1.0"
