//! TODO: generate task handler
