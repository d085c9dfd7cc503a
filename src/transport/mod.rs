//! Transport: connections, the Kamailio-shaped TCP reader loop, UDP receive,
//! and the kernel backend (tokio + socket2).

pub mod conn;

use crate::config::Config;
use crate::core::nosip::NosipHook;

/// Run the proxy until SIGINT/SIGTERM. `hook` overrides the configured nosip hook.
pub fn run(cfg: Config, hook: Option<Box<dyn NosipHook>>) -> anyhow::Result<()> {
    let _ = (cfg, hook);
    todo!()
}
