"""Results tables (``kdzoo report``) and figures (``kdzoo plot``) of runs and zoos."""
from .collect import collect, group_rows
from .table import CSV_COLUMNS, markdown, report_data, to_csv, to_json

__all__ = ["CSV_COLUMNS", "collect", "group_rows", "markdown", "report_data", "to_csv",
           "to_json"]
