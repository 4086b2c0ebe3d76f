"""Field-neutral core: dataset and run layouts, video and masks I/O, the scene of a run, the vocabulary."""
