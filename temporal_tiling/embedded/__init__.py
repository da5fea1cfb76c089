"""The embedded seam-lab model: a small SANA-architecture checkpoint trained by `build.py`."""

from pathlib import Path

SEAMLAB_SANA = Path(__file__).resolve().parent / "seamlab-sana"
