"""Trajectories in and out: file formats, the Trajectory record, validation, sample simulation."""
