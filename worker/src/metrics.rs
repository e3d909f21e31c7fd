//! TODO: module metrics
