"""The published maxP's PyTorch-only public names, on this project's machinery."""
