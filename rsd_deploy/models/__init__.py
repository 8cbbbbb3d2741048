"""The denoiser (``UNetModelSwin``), its window-attention swap point, and the latent codecs."""

from .autoencoder import PixelUnshuffleCodec, VQAutoencoder
from .unet import UNetModelSwin

__all__ = ["UNetModelSwin", "VQAutoencoder", "PixelUnshuffleCodec"]
