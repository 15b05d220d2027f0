"""Pipeline stages: data, the tokenizer (stage one: VQ-VAE, VQGAN), prior training (stage two), generation."""
