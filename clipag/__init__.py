"""clipag: generator-free text-to-image synthesis with a robust CLIP's gradients."""

__version__ = "0.1.0"
