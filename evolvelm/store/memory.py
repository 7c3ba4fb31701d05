"""A retrieval memory over the documents in a run's experience store (the non-parametric alternative
to learning them into the weights): BM25 (rank_bm25) over word tokens, the best match put in context."""
from __future__ import annotations

import re

from evolvelm.store.run import Run


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


class Memory:
    """Documents, ranked for a query by BM25 (Okapi)."""

    def __init__(self, documents: list[str]):
        from rank_bm25 import BM25Okapi

        if not documents:
            raise ValueError("a memory needs at least one document")
        self.documents = documents
        self.index = BM25Okapi([words(d) for d in documents])

    @classmethod
    def from_run(cls, run: Run, upto_round: int) -> "Memory":
        """Every document stored in rounds 1..upto_round, in a fixed order."""
        rows = run.query("SELECT completion FROM samples WHERE skill='document' AND round<=? ORDER BY round, id",
                         (upto_round,))
        return cls([r["completion"] for r in rows])

    def retrieve(self, query: str) -> str:
        """The best-scoring document (the earliest stored on a tie)."""
        scores = self.index.get_scores(words(query))
        return self.documents[max(range(len(scores)), key=lambda i: (scores[i], -i))]
