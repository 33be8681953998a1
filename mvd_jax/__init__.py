"""mvd_jax: Mobile Video Diffusion (MobileVD, arXiv 2412.07583) in JAX/Flax NNX."""
__version__ = "0.1.0"
