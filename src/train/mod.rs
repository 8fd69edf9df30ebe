//! training (todo)
