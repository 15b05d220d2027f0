"""Bridges to other projects' released models (`vqgen import` formats, one file each)."""
