"""The embedded seam-lab model: a small SANA-architecture checkpoint trained by `build.py`.

Its folder is `temporal_tiling.sana.EMBEDDED_MODEL`.
"""
