"""Retrieval for RAG with LangChain and vecpress, on a real corpus, fully offline.

Indexes WordNet glosses ("lemma: definition; examples") with the default local embedder
(all-MiniLM-L6-v2) into a persistent vecpress store, then runs LangChain retrievers over it:
plain similarity, MMR, a relevance threshold, a metadata filter, and a retrieval chain that
fills a prompt (hand the prompt to any chat model to finish the RAG loop).

    HF_HUB_OFFLINE=1 python examples/langchain_rag.py
    HF_HUB_OFFLINE=1 python examples/langchain_rag.py --path ./wordnet_db "a small boat"

The second run reopens the store at ``--path`` instead of embedding again.
Needs: ``pip install "vecpress[langchain,sentence-transformers]"`` and WordNet's data files
(``apt-get install wordnet-base``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from langchain_core.documents import Document
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnablePassthrough

from vecpress.embeddings import default_embedder
from vecpress.embeddings.wrappers import as_langchain_embeddings
from vecpress.integrations.langchain import VecpressVectorStore

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.datasets import load_wordnet_glosses  # noqa: E402

QUESTIONS = [
    "What do you call a small boat used for fishing?",
    "the feeling of being very happy",
    "a tool for cutting wood",
]

PROMPT = ChatPromptTemplate.from_messages([
    ("system", "Answer with the word being defined, using only these dictionary entries:\n\n"
               "{context}"),
    ("human", "{question}"),
])


def wordnet_documents(limit: int) -> list[Document]:
    """``limit`` glosses spread evenly over nouns, verbs, adjectives and adverbs."""
    texts = load_wordnet_glosses()
    step = max(1, len(texts) // limit)
    documents = []
    for row in range(0, len(texts), step)[:limit]:
        lemma, _, gloss = texts[row].partition(": ")
        documents.append(Document(id=f"wordnet-{row}", page_content=texts[row],
                                  metadata={"lemma": lemma, "row": row,
                                            "has_example": '"' in gloss}))
    return documents


def format_docs(docs: list[Document]) -> str:
    return "\n".join(f"- {doc.page_content}" for doc in docs)


def open_store(path: Path, limit: int) -> VecpressVectorStore:
    embeddings = as_langchain_embeddings(default_embedder())
    if (path / "docs.sqlite").exists():
        store = VecpressVectorStore.load_local(path, embeddings)
        print(f"reopened {path}: {len(store.collection):,} documents")
        return store
    documents = wordnet_documents(limit)
    started = time.perf_counter()
    store = VecpressVectorStore.from_documents(documents, embeddings, path=path, bits=4,
                                               show_progress=True)
    stats = store.collection.stats()
    print(f"indexed {len(documents):,} WordNet glosses into {path} in "
          f"{time.perf_counter() - started:.1f} s; RAM: {stats['ram_bytes_per_vector']:,.1f} B per "
          f"vector + {stats['ram_fixed_bytes'] / 1024:.0f} KiB fixed (as `vecpress stats` counts)")
    return store


def show(title: str, docs: list[Document]) -> None:
    print(f"  {title}:")
    for doc in docs:
        print(f"    [{doc.id}] {doc.page_content[:100]}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("questions", nargs="*", default=QUESTIONS)
    parser.add_argument("--path", type=Path, default=None,
                        help="store directory (default: a temporary one)")
    parser.add_argument("--limit", type=int, default=2000, help="glosses to index")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        path = args.path or Path(tmp) / "wordnet_db"
        with open_store(path, args.limit) as store:
            similar = store.as_retriever(search_kwargs={"k": 4})
            diverse = store.as_retriever(search_type="mmr",
                                         search_kwargs={"k": 4, "fetch_k": 20,
                                                        "lambda_mult": 0.5})
            confident = store.as_retriever(search_type="similarity_score_threshold",
                                           search_kwargs={"k": 4, "score_threshold": 0.75})
            with_examples = store.as_retriever(
                search_kwargs={"k": 4, "filter": {"has_example": True}})
            rag = {"context": similar | format_docs, "question": RunnablePassthrough()} | PROMPT

            for question in args.questions:
                print(f"\nQ: {question}")
                for doc, relevance in store.similarity_search_with_relevance_scores(question,
                                                                                    k=4):
                    print(f"    {relevance:.3f}  {doc.page_content[:100]}")
                show("MMR (diverse)", diverse.invoke(question))
                show("relevance >= 0.75", confident.invoke(question))
                show("filter has_example=True", with_examples.invoke(question))

            print("\nPrompt for a chat model (retriever | format_docs | prompt):\n")
            for message in rag.invoke(args.questions[0]).to_messages():
                print(f"[{message.type}] {message.content}\n")


if __name__ == "__main__":
    main()
