"""FAISS retrieval over feature sets: the index, text / image / id queries, and the search page server."""
