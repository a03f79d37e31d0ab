"""The evaluation harness: one table of accuracy and LLM token ratio for every mode.

    modes.py    the modes (slm, llm, relay, random, query, confidence, r2r, citer) and their settings
    runner.py   the Evaluator: answers questions in a mode through the edge SDK; a cloud on loopback
    records.py  per-question records and per-mode runs (LLM token ratio, empty / cut answers)
    report.py   JSON per mode, results.md, headline figures (gap recovered, cost saved)
    plots.py    accuracy vs LLM token ratio (PNG)
    cli.py      `relayllm eval`

The names below are the harness's API (`from relayllm.training import eval as E`); nothing
heavy is imported until a model is loaded.
"""

from relayllm.training.data.benchmark import Example, builtin_examples, load_jsonl
from relayllm.training.data.grading import make_grader
from relayllm.training.errors import DataError, EvalError
from relayllm.training.eval.modes import (
    DEFAULT_CALL_THRESHOLD,
    LEARNED_ROUTER_MODES,
    MODES,
    SWEPT_MODES,
    query_router_run,
    run_named_mode,
)
from relayllm.training.eval.records import ModeRun, QuestionRecord, llm_token_ratio, record_from_result
from relayllm.training.eval.report import (
    PLOT_FILE,
    TABLE_FILE,
    CostSaved,
    cost_saved_vs_random,
    fmt_fraction,
    gap_recovered,
    markdown_table,
    ratio_at_accuracy,
    read_runs,
    text_table,
    write_mode_json,
    write_report,
)
from relayllm.training.eval.runner import Evaluator, local_cloud, run_mode

__all__ = [
    "DEFAULT_CALL_THRESHOLD", "LEARNED_ROUTER_MODES", "MODES", "PLOT_FILE", "SWEPT_MODES", "TABLE_FILE",
    "CostSaved", "DataError", "EvalError", "Evaluator", "Example", "ModeRun", "QuestionRecord",
    "builtin_examples", "cost_saved_vs_random", "fmt_fraction", "gap_recovered", "llm_token_ratio",
    "load_jsonl", "local_cloud", "make_grader", "markdown_table", "query_router_run", "ratio_at_accuracy",
    "read_runs", "record_from_result", "run_mode", "run_named_mode", "text_table", "write_mode_json",
    "write_report",
]
