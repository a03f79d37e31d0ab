"""The evaluation harness: one table of accuracy and LLM token ratio for every mode.

    modes.py    the modes (slm, llm, relay, random, query = the random query split, confidence, r2r,
                citer) and their settings
    runner.py   the Evaluator: answers questions in a mode through the edge SDK; a cloud on loopback
    records.py  per-question records and per-mode runs (LLM token ratio, empty / cut answers)
    report.py   JSON per mode, results.md (the table's columns are described there), gap recovered
    stats.py    the 95% Wilson interval every accuracy carries
    costs.py    cost as users pay it: cloud tokens and seconds, device seconds, wall over a link
    selection.py  settings chosen on validation by one rule; the random router's matched cost
    link.py     a TCP delay line: a network round trip simulated on loopback
    machine.py  what a run ran on: the commit, the machine, the pair's sizes and decode costs
    plots.py    accuracy vs LLM token ratio, and vs cloud compute (PNG)
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
    random_query_split_run,
    run_named_mode,
)
from relayllm.training.eval.costs import LINK_RTT_S, cost_figures, wall_with_link_per_answer
from relayllm.training.eval.records import (
    CloudUsage,
    ModeRun,
    QuestionRecord,
    llm_token_ratio,
    record_from_result,
    tally_stream,
)
from relayllm.training.eval.report import (
    COMPUTE_PLOT_FILE,
    PLOT_FILE,
    TABLE_FILE,
    fmt_fraction,
    gap_recovered,
    markdown_table,
    read_runs,
    row_figures,
    text_table,
    write_mode_json,
    write_report,
)
from relayllm.training.eval.runner import Evaluator, local_cloud, run_mode
from relayllm.training.eval.selection import RATIO_CAP, Choice, CostSaved, choose, chosen_run, rule_text, \
    saved_vs_random, sweep_until
from relayllm.training.eval.stats import fmt_accuracy, wilson_interval

__all__ = [
    "COMPUTE_PLOT_FILE", "DEFAULT_CALL_THRESHOLD", "LEARNED_ROUTER_MODES", "LINK_RTT_S", "MODES", "PLOT_FILE",
    "RATIO_CAP", "SWEPT_MODES", "TABLE_FILE", "Choice", "CloudUsage", "CostSaved", "DataError", "EvalError",
    "Evaluator", "Example", "ModeRun", "QuestionRecord", "builtin_examples", "choose", "chosen_run", "cost_figures",
    "fmt_accuracy", "fmt_fraction", "gap_recovered", "llm_token_ratio", "load_jsonl", "local_cloud", "make_grader",
    "markdown_table", "random_query_split_run", "read_runs", "record_from_result", "row_figures", "rule_text", "run_mode",
    "run_named_mode", "saved_vs_random", "sweep_until", "tally_stream", "text_table", "wall_with_link_per_answer",
    "wilson_interval", "write_mode_json", "write_report",
]
