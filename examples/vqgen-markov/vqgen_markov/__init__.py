"""Example vqgen extension: one prior and one training plugin, registered through entry points."""
