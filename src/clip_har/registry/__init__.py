"""The model registry: MLflow registered models with a promotion gate and history, the
``models:/`` bundle references every command accepts, and the Hugging Face Hub.

MLflow and huggingface_hub are imported only when used. See docs/registry.md.
"""
