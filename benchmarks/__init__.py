"""Side-by-side speed and memory measurements of llama_fdl, with HF transformers as the reference.

Never part of the test command (tests/test_benchmarks.py only runs them at toy sizes to keep
them working). `python -m benchmarks.run` runs them all and prints the tables of
docs/PERFORMANCE.md; each module also runs alone (`python -m benchmarks.step_vs_hf --help`).
"""
