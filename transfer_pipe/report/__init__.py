"""Results (read through the ``Scored`` protocols) as tables, markdown and PNG plots.

Plain library code: no Prefect, torch or zarr. Flows turn the rows into artifacts.
"""

from transfer_pipe.report.finetune import FinetuneScored, comparison_rows, finetune_report
from transfer_pipe.report.plots import (
    png_data_uri,
    save_confusion_matrix,
    save_learning_curves,
    save_per_class_accuracy,
    save_result_plots,
)
from transfer_pipe.report.sweep import (
    save_depth_curve,
    save_label_curve,
    save_sweep_plots,
    sweep_markdown,
)
from transfer_pipe.report.tables import (
    ROW_COLUMNS,
    Scored,
    markdown_report,
    metrics_rows,
    terminal_table,
)

__all__ = [
    "ROW_COLUMNS",
    "FinetuneScored",
    "Scored",
    "comparison_rows",
    "finetune_report",
    "markdown_report",
    "metrics_rows",
    "png_data_uri",
    "save_confusion_matrix",
    "save_depth_curve",
    "save_label_curve",
    "save_learning_curves",
    "save_per_class_accuracy",
    "save_result_plots",
    "save_sweep_plots",
    "sweep_markdown",
    "terminal_table",
]
