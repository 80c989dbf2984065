//! (being written by H3)
