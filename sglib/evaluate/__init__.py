"""Evaluation: the revisited Oxford/Paris protocol (``protocol``; the package is also reachable as
``sglib.evaluate``), its streaming form for million-image databases (``streaming``), shortlist
policies (``shortlist``), and the retrieval path rank -> shortlist -> rerank -> revisited
(``retrieval``)."""
from .protocol import PROTOCOLS, protocol_sets, results_table, revisited, scores_from_positions, summary

__all__ = ["PROTOCOLS", "protocol_sets", "results_table", "revisited", "scores_from_positions", "summary"]
