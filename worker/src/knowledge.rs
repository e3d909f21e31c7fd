//! TODO: module knowledge
