"""Reference formulas written out independently of dfbench, for tests to compare against."""

import hashlib

import torch


def per_image_generator(seed: int, model_input: torch.Tensor) -> torch.Generator:
    """The documented per-image seed of the extraction recipe: SHA-256 over b"<seed>:" followed by
    the image's float32 model input bytes (3×R×R); first 8 bytes big-endian, mod 2**63."""
    data = f"{seed}:".encode() + model_input.numpy().astype("<f4").tobytes()
    return torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(data).digest()[:8], "big") % 2**63)
