"""Sampling code grids from a prior and decoding them with its tokenizer: what `generate`, `evaluate`, `push`,
`train-prior`'s sample grids and the Python API share.

- `config.SamplingConfig`: the sampling knobs (temperature, top-k, top-p, guidance), declared once with their defaults.
- `sampler.check_pair`: a prior and a tokenizer belong together (codebook size, grid, tokenizer fingerprint).
- `resolve_labels`: the labels to sample for `n` images (one for all, one each, or a row per class).
- `sample_chunks`: `n` grids in chunks, chunk c drawn from its own generator seeded from (seed, c), so any chunk
  can be redrawn alone with the same result (resumable generation, identical images from CLI and API).
"""
