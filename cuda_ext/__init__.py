"""CUDA kernels with a pure-PyTorch twin of each (importing never compiles)."""
