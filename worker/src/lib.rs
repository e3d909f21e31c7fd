//! The kka worker library: datasets, detectors, generators and the task runner.
