"""The port report: one model (a JSON-ready dict) rendered to Markdown and the terminal."""

from porter.report.build import build_report
from porter.report.markdown import render_markdown

__all__ = ["build_report", "render_markdown"]
