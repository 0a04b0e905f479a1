"""The study report: reads a study folder (never the trainer) and writes report.html and report.md.

Modules: study (reading the store), stats (seed statistics), insights (findings in sentences),
figures (matplotlib PNGs), doc (HTML/Markdown rendering), build (assembling and writing).
"""
from cifarlab.report.build import build_report, write_report
from cifarlab.report.study import ReportError, Study, load_study

__all__ = ["ReportError", "Study", "build_report", "load_study", "write_report"]
