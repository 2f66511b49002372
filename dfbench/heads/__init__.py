"""Readouts that several tasks share: the nearest-neighbour matcher and the pixel bank (task-only heads live in
their task folder under dfbench/tasks/)."""
