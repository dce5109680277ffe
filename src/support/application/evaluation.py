"""Retrieval quality metrics over ranked result lists."""

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetrievalMetrics:
    """hit@1, recall@5 and MRR@10 over questions that have at least one gold document."""

    questions: int
    hit_at_1: float
    recall_at_5: float
    mrr_at_10: float


def score_rankings(rankings: Sequence[Sequence[str]], gold: Sequence[frozenset[str]]) -> RetrievalMetrics:
    """Score each ranking (document ids, best first) against its gold set.

    recall@5 is the share of gold documents found in the top five, averaged over questions; with one gold
    document per question it equals hit@5.
    """
    if len(rankings) != len(gold):
        msg = "one ranking per question is needed"
        raise ValueError(msg)
    scored = [(ranking, expected) for ranking, expected in zip(rankings, gold, strict=True) if expected]
    if not scored:
        return RetrievalMetrics(0, 0.0, 0.0, 0.0)
    hit_at_1 = sum(1 for ranking, expected in scored if ranking[:1] and ranking[0] in expected)
    recall_at_5 = sum(len(expected & set(ranking[:5])) / len(expected) for ranking, expected in scored)
    mrr = 0.0
    for ranking, expected in scored:
        rank = next((index for index, doc in enumerate(ranking[:10], 1) if doc in expected), None)
        mrr += 1 / rank if rank else 0.0
    count = len(scored)
    return RetrievalMetrics(count, hit_at_1 / count, recall_at_5 / count, mrr / count)
