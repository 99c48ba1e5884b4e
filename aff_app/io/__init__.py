"""Trajectories in and out: file formats, the Trajectory record, validation, sample simulation.

``files`` is the entry point (``load_trajectory``, ``write_trajectory``, the
format registry); ``trajectory`` the exchange record; ``validation`` the checks
on loaded data; ``simulate`` the GFN2-xTB sample trajectories. Nothing is
imported here, so that ``import aff_app.io.formats`` stays light.
"""
