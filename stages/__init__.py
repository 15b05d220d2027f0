"""Pipeline stages: data, the VQ-VAE tokenizer (stage one), prior training (stage two), generation."""
