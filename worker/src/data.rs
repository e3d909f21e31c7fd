//! TODO: module data
