//! [`Shared`]: what every route and connection of one server reads.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::watch;

use crate::backend::Backend;
use crate::config::Config;
use crate::hub::Hub;

/// The state of one running server, shared by its routes and connections.
pub(crate) struct Shared {
    pub(crate) hub: Arc<Hub>,
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) config: Config,
    /// Becomes `true` when the server shuts down.
    pub(crate) shutdown: watch::Receiver<bool>,
    sessions: AtomicU64,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub(crate) fn new(
        hub: Arc<Hub>,
        backend: Arc<dyn Backend>,
        config: Config,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Shared {
            hub,
            backend,
            config,
            shutdown,
            sessions: AtomicU64::new(0),
        }
    }

    /// A new session number, for `welcome`.
    pub(crate) fn next_session(&self) -> u64 {
        self.sessions.fetch_add(1, Ordering::Relaxed) + 1
    }
}
