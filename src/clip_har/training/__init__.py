"""Training: the embedding cache, the trainer loop, head strategies and distributed runs.

See docs/training.md.
"""
