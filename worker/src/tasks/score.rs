//! TODO: score task handler
