"""cxr.report: the run report (report.md + self-contained report.html) and the run's figures.

`document.write_report(run_dir)` is the entry point. Inside: `runfiles` reads a run folder
tolerantly, `sections` turns what it found into `blocks`, `markdown` and `htmlpage` render them,
`format` formats values. `dataset_figures` and `result_figures` draw the PNGs (matplotlib). Nothing
here imports torch.
"""
