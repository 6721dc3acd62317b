"""Benchmarks of issue #8 (``make bench``): what users pay in worker slots, memory and time. See RESULTS.md."""
