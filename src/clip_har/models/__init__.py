"""Models: backbone, presets, prompts, heads, classifier and bundle. See docs/models.md."""
