"""The registry of published lenses: its schema, its files, and the catalogue built from them."""
