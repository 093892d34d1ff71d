//! [`Shared`]: what every route and connection of one server reads.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::sync::{Notify, watch};

use crate::backend::Backend;
use crate::config::Config;
use crate::hub::Hub;
use crate::site::Site;

/// The state of one running server, shared by its routes and connections.
pub(crate) struct Shared {
    pub(crate) hub: Arc<Hub>,
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) config: Config,
    /// The Host and Origin rules, from the bound address and `config`.
    pub(crate) site: Site,
    /// Becomes `true` when the server shuts down.
    pub(crate) shutdown: watch::Receiver<bool>,
    sessions: AtomicU64,
    /// Connections of this server still being served.
    open: AtomicUsize,
    /// Told when `open` drops to zero.
    all_closed: Notify,
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
        bound: std::net::SocketAddr,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let site = Site {
            bound,
            allowed_hosts: config.allowed_hosts.clone(),
            allowed_origins: config.allowed_origins.clone().unwrap_or_default(),
        };
        Shared {
            hub,
            backend,
            config,
            site,
            shutdown,
            sessions: AtomicU64::new(0),
            open: AtomicUsize::new(0),
            all_closed: Notify::new(),
        }
    }

    /// Counts a connection as open until the returned guard drops (when it
    /// ends, however it ends).
    pub(crate) fn open_connection(&self) -> OpenConnection<'_> {
        self.open.fetch_add(1, Ordering::AcqRel);
        OpenConnection(self)
    }

    /// Returns once every connection of this server has ended: their
    /// writers have sent their close frames or given up.
    pub(crate) async fn all_closed(&self) {
        loop {
            let notified = self.all_closed.notified();
            if self.open.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// A new session number, for `welcome`.
    pub(crate) fn next_session(&self) -> u64 {
        self.sessions.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// One open connection; see [`Shared::open_connection`].
pub(crate) struct OpenConnection<'a>(&'a Shared);

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.all_closed.notify_waiters();
        }
    }
}
