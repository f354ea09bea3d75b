"""The command line: thin click commands over the study and service layers.

    gakt-launch --short_title baseline --profile quickstart
    gakt-eval 423891 && gakt-repro 423891 && gakt-compare 423891

`gakt <verb>` is the group; each verb is also a console script (pyproject's [project.scripts]): gakt-launch,
gakt-repro, gakt-compare, gakt-eval, gakt-runs (run.py), gakt-data (data.py), gakt-study (study.py), gakt-register
and gakt-predict (model.py).
Known errors become one line on stderr: exit 2 for bad input (parameters, files, run ids), 1 for failures.
"""
from gainakt3exp.cli.common import script
from gainakt3exp.cli.data import data_group
from gainakt3exp.cli.model import predict_cmd, register_cmd
from gainakt3exp.cli.run import compare_cmd, eval_cmd, launch_cmd, main, repro_cmd, runs_cmd
from gainakt3exp.cli.study import study_group

main.add_command(data_group)
main.add_command(study_group)

launch_main = script(launch_cmd)
repro_main = script(repro_cmd)
compare_main = script(compare_cmd)
eval_main = script(eval_cmd)
runs_main = script(runs_cmd)
data_main = script(data_group)
study_main = script(study_group)
register_main = script(register_cmd)
predict_main = script(predict_cmd)

__all__ = ["main", "launch_main", "repro_main", "compare_main", "eval_main", "runs_main", "data_main", "study_main",
           "register_main", "predict_main"]
