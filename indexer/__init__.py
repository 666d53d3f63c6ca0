"""Loupe's library core: reading images, CLIP embedding, the FAISS vector store, the SQL
catalog and bulk indexing jobs. Importing it does no work and never imports Flask."""

__version__ = "0.1.0"
