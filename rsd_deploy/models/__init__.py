"""The denoiser (``UNetModelSwin``), its window-attention swap point, and the latent codecs;
beside each, how its checkpoint layout is read (``unet_layout``, ``autoencoder.infer_vq_config``)."""

from .autoencoder import PixelUnshuffleCodec, VQAutoencoder
from .unet import UNetModelSwin

__all__ = ["UNetModelSwin", "VQAutoencoder", "PixelUnshuffleCodec"]
