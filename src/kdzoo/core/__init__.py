"""The vocabulary below methods and engine: roles, stages, steps and learning-rate schedules."""
from .schedule import Cosine, LRSchedule, MultiStep, Piecewise, build_schedule
from .stage import STUDENT, TEACHER, Role, Stage, Step

__all__ = ["STUDENT", "TEACHER", "Cosine", "LRSchedule", "MultiStep", "Piecewise", "Role",
           "Stage", "Step", "build_schedule"]
