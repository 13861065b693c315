//! Cluster mode: the directory comes from the ConfigMaps the operator publishes.

pub mod assemble;
pub mod source;
