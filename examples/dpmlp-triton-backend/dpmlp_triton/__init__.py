"""dpmlp-triton-backend: an example dpmlp GPU backend whose kernels are written in Triton, on
PyTorch device memory. The backend is ``dpmlp_triton.ops_triton.TritonBackend`` (``--backend
triton``); its kernels are in ``dpmlp_triton.kernels`` (imported only when a backend is made)."""

__version__ = "0.1.0"
