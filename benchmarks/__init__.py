"""The benchmarks: scripts that measure speed, memory and quality and print a table and write JSON (never timed
tests). Run them from the repository root as modules, `python -m benchmarks.run_all` (`make bench`), with vqgen
installed (`pip install -e .`); `benchmarks.measure` holds what they share."""
