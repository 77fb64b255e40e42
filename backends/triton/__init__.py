"""Backend: triton."""
