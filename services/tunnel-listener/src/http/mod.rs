//! The listener's HTTP side: the tunnel action block's webhook.

pub mod server;
pub mod webhook;
