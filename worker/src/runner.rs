//! TODO: module runner
