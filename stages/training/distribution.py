"""How many processes a launch started (the engines themselves: stages/training/sharding.py)."""

import os


def launched_processes() -> int:
    """How many processes `accelerate launch` / torchrun started (1 when run directly)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1
