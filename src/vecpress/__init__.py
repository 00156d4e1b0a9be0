"""vecpress: a compressed, embedded vector store for RAG."""
