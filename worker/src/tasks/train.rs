//! TODO: train task handler
