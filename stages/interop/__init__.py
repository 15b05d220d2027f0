"""Bridges to other projects' released models: `vqgen import` formats (one file each, the contract in `base.py`),
the VQGAN weight layouts they share (`vqgan_layout.py`), safe checkpoint reading (`sources.py`) and the export of a
vqgen tokenizer as a diffusers VQModel (`diffusers_vq.py`)."""
