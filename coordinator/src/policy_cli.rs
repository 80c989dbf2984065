//! Policy subcommands (being written by H1).
