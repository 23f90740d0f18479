"""Grids of runs: ``kdzoo zoo`` expands a grid of methods x (teacher, student) pairs x data x
seeds, trains its teachers once, and runs (or resumes, or skips) every run."""
from .grid import Grid, RunPlan, expand, load_grid_spec, packaged_grids
from .runner import dry_run_commands, run_grid, status

__all__ = ["Grid", "RunPlan", "dry_run_commands", "expand", "load_grid_spec",
           "packaged_grids", "run_grid", "status"]
