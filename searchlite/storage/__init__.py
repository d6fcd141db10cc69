"""Where an index lives on disk: SQLite (the truth), its migrations, the FAISS cache, the write lock, atomic files."""
