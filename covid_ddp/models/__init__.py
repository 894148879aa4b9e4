"""Models: the seed's ``Net``, standard backbones, SyncBatchNorm, Grad-CAM, and weights files
(read safely, with their sidecar) and inference on them. Imports nothing but ``data``'s neighbours below it.
"""
