"""The benchmark harness behind ``nest bench``: systems, tasks, metrics and reports side by side."""
