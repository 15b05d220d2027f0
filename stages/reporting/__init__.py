"""Pictures of runs: charts drawn with PIL (charts.py), a run's plots/ folder (run_plots.py), the self-contained
report.html (report.py) and the web demo (demo.py)."""
