"""Put the pack's root on sys.path so tests import the engine as `temporal_tiling`.

Tests use one torch thread: the models are tiny, and on a small shared CPU extra threads only
oversubscribe the cores (measured here: up to 30× slower per call with two threads under load).
"""

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

torch.set_num_threads(1)
