"""Framework adapters: `langchain` and `llama_index` each wrap a Collection as the framework's
own vector store. Import the submodule you need; each imports its framework on import."""
