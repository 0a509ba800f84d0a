"""Reporting: what the evaluate stages wrote, side by side.

scores.py   the evaluations' scores.json of every arm and split (the one collector)
charts.py   the grouped bar chart both pages draw
report.py   the pipeline's report (reports/report.md, summary.json, miou.png)
results.py  the ablation page (docs/results.md with ablation/params.yaml): mean ± std over seeds
compare.py  `seggen compare`: the latest evaluations in MLflow, side by side
"""
