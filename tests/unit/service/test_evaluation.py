"""The evaluation table a run shows in the MLflow UI (eval_table.json): a row per split, a column per metric."""
from gainakt3exp.service.evaluation import eval_table


def test_eval_table_has_a_row_per_split_and_a_column_per_metric():
    table = eval_table({"checkpoint_epoch": 3, "test_auc": 0.712345, "test_window_auc": 0.7, "test_n": 10,
                        "valid_auc": 0.69, "valid_mastery_correlation": float("nan"), "test_mastery_correlation": 0.1})
    assert table == {"columns": ["split", "auc", "n", "mastery_correlation"],
                     "data": [["valid", 0.69, None, None], ["test", 0.7123, 10, 0.1], ["test_window", 0.7, None, None]]}
