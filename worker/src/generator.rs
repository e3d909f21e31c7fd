//! TODO: module generator
