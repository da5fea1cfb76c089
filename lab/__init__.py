"""The lab beside the shipped engine: the seam-lab scene generator (`seamlab`), the tiny random models
tests and benchmarks build (`fixtures`) and the trainer of the embedded model (`training`).

Nothing here ships with the pack or runs inside ComfyUI: the engine (`temporal_tiling`) and the nodes
never import `lab`; `lab` imports the engine.
"""
