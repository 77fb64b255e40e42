"""Backend: reference."""
