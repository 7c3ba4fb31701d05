"""evolvelm: self-evolution rounds (acquire -> refine -> update -> evaluate) for language models.

Importing the package is cheap: torch, transformers and optional extras load only when used.
"""
__version__ = "0.1.0"
