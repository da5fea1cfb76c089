"""Training of the embedded seam-lab model and the temporal LoRA (`python -m lab.training`).

Imports run one way, from the math up to the command line:
`losses`, `toy_models`, `data`, `plots` → `loop` → `autoencoder`, `flow_matching` → `temporal_lora`
→ `embedded_recipe` (with its `model_card.md` template) → `cli`. The engine and the nodes never import
this package; it imports the engine (`temporal_tiling`: `bcla`, `plan`, `lora`, `sana`, `options`, and
the training command named by `cli.TRAIN_COMMAND`) and the scenes of `lab.seamlab`.
"""
