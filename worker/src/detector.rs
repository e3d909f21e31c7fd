//! TODO: module detector
