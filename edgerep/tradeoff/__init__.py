"""The accuracy–latency trade-off: rows, the Pareto front, tables (Markdown/CSV/JSON) and the plot."""

from .table import TradeoffRow, mark_pareto, to_csv, to_json, to_markdown

__all__ = ["TradeoffRow", "mark_pareto", "to_csv", "to_json", "to_markdown"]
