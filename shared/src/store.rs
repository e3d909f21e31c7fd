//! Redis keys for experiment state, anomalies, pools and checkpoints.
