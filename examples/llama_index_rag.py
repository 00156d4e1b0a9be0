"""Retrieval for RAG with LlamaIndex and vecpress, on a real corpus, fully offline.

Indexes WordNet glosses ("lemma: definition; examples") with the default local embedder
(all-MiniLM-L6-v2) through ``VectorStoreIndex.from_documents`` into a persistent vecpress
store, then retrieves with plain similarity, MMR, full-text, hybrid and a metadata filter, and
fills the prompt a chat model would get (plug in any LlamaIndex LLM to finish the RAG loop).

    HF_HUB_OFFLINE=1 python examples/llama_index_rag.py
    HF_HUB_OFFLINE=1 python examples/llama_index_rag.py --persist-dir ./wordnet_storage "a small boat"

The second run reopens the store from ``--persist-dir`` without embedding a single document.
Needs: ``pip install "vecpress[llama-index,sentence-transformers]"`` and WordNet's data files
(``apt-get install wordnet-base``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from llama_index.core import Document, StorageContext, VectorStoreIndex
from llama_index.core.prompts import PromptTemplate
from llama_index.core.vector_stores import MetadataFilter, MetadataFilters

from vecpress.embeddings import default_embedder
from vecpress.embeddings.wrappers import as_llama_index_embedding
from vecpress.integrations.llama_index import VecpressVectorStore
from vecpress.wordnet import sample_glosses

QUESTIONS = [
    "What do you call a small boat used for fishing?",
    "the feeling of being very happy",
    "a tool for cutting wood",
]

PROMPT = PromptTemplate(
    "Answer with the word being defined, using only these dictionary entries:\n"
    "{context}\n\nQuestion: {question}\nAnswer: "
)


def wordnet_documents(limit: int) -> list[Document]:
    """``limit`` glosses spread over nouns, verbs, adjectives and adverbs, one Document each."""
    glosses, _ = sample_glosses(limit)
    return [
        Document(text=g.text, doc_id=g.id, metadata=g.metadata,
                 excluded_embed_metadata_keys=["source", "pos"])
        for g in glosses
    ]


def open_index(persist_dir: Path, limit: int, embed_model) -> VectorStoreIndex:
    if (persist_dir / "default__vector_store.json").exists():
        started = time.perf_counter()
        vector_store = VecpressVectorStore.from_persist_dir(str(persist_dir))
        index = VectorStoreIndex.from_vector_store(vector_store, embed_model=embed_model)
        print(f"reopened {persist_dir}: {len(vector_store.client):,} nodes in "
              f"{time.perf_counter() - started:.2f} s, nothing re-embedded")
        return index
    documents = wordnet_documents(limit)
    started = time.perf_counter()
    # the store lives in its own directory beside LlamaIndex's JSON files and is written as
    # nodes arrive; StorageContext.persist only records where it is
    vector_store = VecpressVectorStore(path=persist_dir / "vecpress", bits=4)
    storage_context = StorageContext.from_defaults(vector_store=vector_store)
    index = VectorStoreIndex.from_documents(documents, storage_context=storage_context,
                                            embed_model=embed_model, show_progress=True)
    storage_context.persist(persist_dir=str(persist_dir))
    stats = vector_store.client.stats()
    print(f"indexed {len(documents):,} WordNet glosses into {persist_dir} in "
          f"{time.perf_counter() - started:.1f} s; RAM: {stats['ram_bytes_per_vector']:,.1f} B per "
          f"vector × {stats['count']:,} + {stats['ram_fixed_bytes'] / 1024:.0f} KiB fixed "
          "(as `vecpress stats` counts)")
    return index


def show(title: str, hits) -> None:
    print(f"  {title}:")
    for hit in hits:
        print(f"    {hit.score:7.3f}  {hit.node.get_content()[:96]}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("questions", nargs="*", default=QUESTIONS)
    parser.add_argument("--persist-dir", type=Path, default=None,
                        help="storage directory (default: a temporary one)")
    parser.add_argument("--limit", type=int, default=2000, help="glosses to index")
    args = parser.parse_args(argv)

    embed_model = as_llama_index_embedding(default_embedder())
    with tempfile.TemporaryDirectory() as tmp:
        persist_dir = args.persist_dir or Path(tmp) / "storage"
        index = open_index(persist_dir, args.limit, embed_model)
        similar = index.as_retriever(similarity_top_k=4)
        diverse = index.as_retriever(similarity_top_k=4, vector_store_query_mode="mmr",
                                     vector_store_kwargs={"mmr_threshold": 0.5})
        words = index.as_retriever(similarity_top_k=4, vector_store_query_mode="text_search")
        hybrid = index.as_retriever(similarity_top_k=4, vector_store_query_mode="hybrid",
                                    alpha=0.7)
        nouns = index.as_retriever(similarity_top_k=4, filters=MetadataFilters(
            filters=[MetadataFilter(key="pos", value="noun")]))

        for question in args.questions:
            print(f"\nQ: {question}")
            show("similarity (cosine)", similar.retrieve(question))
            show("MMR (diverse)", diverse.retrieve(question))
            show("full text (BM25)", words.retrieve(question))
            show("hybrid (alpha=0.7, fused score)", hybrid.retrieve(question))
            show("filter pos == noun", nouns.retrieve(question))

        question = args.questions[0]
        context = "\n".join(f"- {hit.node.get_content()}" for hit in similar.retrieve(question))
        print("\nPrompt for a chat model (retriever -> PromptTemplate); with an LLM configured, "
              "index.as_query_engine(llm=...) does this step and the call:\n")
        print(PROMPT.format(context=context, question=question))
        index.vector_store.close()


if __name__ == "__main__":
    main()
