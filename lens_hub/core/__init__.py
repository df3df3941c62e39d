"""The lens itself: its math, the model adapters, its config and file format, and the checks they need."""
