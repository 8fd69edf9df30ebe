//! HTTP serving (todo)
