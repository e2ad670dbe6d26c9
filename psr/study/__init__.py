"""The study runner: run layout, stage graph and scheduler, notebook execution, stages, report."""
