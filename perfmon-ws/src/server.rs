//! [`Server`]: starts the routes on a listener and stops them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::backend::Backend;
use crate::config::Config;
use crate::hub::Hub;
use crate::listen;
use crate::routes;
use crate::shared::Shared;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The listener could not be handed to tokio (made non-blocking,
    /// registered with the reactor, or asked its address).
    #[error(
        "could not serve on the listener {addr}: {source}; pass a bound, open \
         std::net::TcpListener, and call Server::start inside a tokio runtime with I/O enabled"
    )]
    Listener {
        /// The listener's address, as far as it is known.
        addr: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// A running server. [`Server::shutdown`] stops it and waits; dropping it
/// stops it too, without waiting.
#[derive(Debug)]
#[must_use = "the server stops when dropped: keep it, and call .shutdown(grace).await to stop"]
pub struct Server {
    addr: SocketAddr,
    hub: Arc<Hub>,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Serves on `listener` (bind it to port 0 for a free port) on the
    /// current tokio runtime.
    ///
    /// `hub` holds the replay ring: pass the same hub to a restarted server
    /// and clients resume across the restart.
    ///
    /// # Errors
    ///
    /// [`Error::Listener`] if the listener cannot be used by tokio.
    pub fn start(
        listener: std::net::TcpListener,
        config: Config,
        backend: Arc<dyn Backend>,
        hub: Arc<Hub>,
    ) -> Result<Server, Error> {
        let name = format!("{:?}", listener.local_addr().ok());
        let listener_error = |source| Error::Listener {
            addr: name.clone(),
            source,
        };
        listener.set_nonblocking(true).map_err(listener_error)?;
        let addr = listener.local_addr().map_err(listener_error)?;
        let listener = tokio::net::TcpListener::from_std(listener).map_err(listener_error)?;
        let (stop, shutdown) = watch::channel(false);
        let shared = Arc::new(Shared::new(
            Arc::clone(&hub),
            backend,
            config,
            addr,
            shutdown,
        ));
        let app = routes::router(Arc::clone(&shared));
        let until = shared.shutdown.clone();
        let task = tokio::spawn(listen::serve(listener, app, Arc::clone(&shared), until));
        Ok(Server {
            addr,
            hub,
            shared,
            stop,
            task,
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The hub: publish items to it.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Closes every connection with 1001 (going away) and stops listening.
    /// Returns once every connection's close frame is written (or its
    /// writer gave up), or after `grace`, whichever comes first: a program
    /// that exits right after this has told its clients to resume.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.stop.send(true);
        let deadline = tokio::time::Instant::now() + grace;
        let _ = tokio::time::timeout_at(deadline, self.task).await;
        let _ = tokio::time::timeout_at(deadline, self.shared.all_closed()).await;
    }
}
