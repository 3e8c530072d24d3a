"""The experiment planner: a plan (spacing, 2D/3D, patch, batch, depth, width, steps) from the data, the
machine and a time budget (``medflow plan``)."""
