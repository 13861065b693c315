//! virtmail's delivery agent library.

pub mod check;
