"""Masked-diffusion language models: checkpoint formats (``formats``), the denoising loop (``loop``)
and its decoders (``decoders``): which masked positions to commit after each forward pass.

Importing this package is light; its modules import torch when used.
"""
