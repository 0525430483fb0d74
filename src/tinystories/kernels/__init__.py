"""CPU kernels in C (fused attention, chunked loss, decode), compiled on first use, with a PyTorch fallback."""
