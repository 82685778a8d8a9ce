//! The clients logged in now. Each gets a cancel key of shardcar's own; a
//! cancel request carrying it is forwarded to the backend that is running
//! that client's statement at that moment, if any. The admin console lists
//! them (`SHOW CLIENTS`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The cancel key of the backend session a client is attached to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendKey {
    pub addr: std::sync::Arc<str>,
    pub pid: i32,
    pub secret: i32,
}

/// Where a client's statements run right now; updated on attach/release.
pub type Slot = Arc<Mutex<Option<BackendKey>>>;

/// Who a client is, as `SHOW CLIENTS` tells.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub user: String,
    pub database: String,
    pub application_name: String,
    pub address: String,
    pub since: SystemTime,
}

struct Client {
    secret: i32,
    slot: Slot,
    info: ClientInfo,
}

#[derive(Default)]
pub struct Registry {
    clients: Mutex<HashMap<i32, Client>>,
}

/// Removes the client's key when its session ends.
pub struct Registration {
    registry: Arc<Registry>,
    pub pid: i32,
    pub secret: i32,
    pub slot: Slot,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut m) = self.registry.clients.lock() {
            m.remove(&self.pid);
        }
    }
}

impl Registry {
    pub fn register(self: &Arc<Self>, info: ClientInfo) -> Registration {
        let slot: Slot = Arc::new(Mutex::new(None));
        let secret: i32 = rand::random();
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let pid = loop {
            // Positive, like a real process id, and unique among live clients.
            let pid = rand::random::<i32>() & 0x3fff_ffff;
            if pid != 0 && !clients.contains_key(&pid) {
                break pid;
            }
        };
        clients.insert(pid, Client { secret, slot: slot.clone(), info });
        Registration { registry: self.clone(), pid, secret, slot }
    }

    /// Every client logged in: its pid, who it is, and whether a server
    /// connection is running its statement now.
    pub fn clients(&self) -> Vec<(i32, ClientInfo, bool)> {
        let clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let mut list: Vec<_> =
            clients.iter().map(|(pid, c)| (*pid, c.info.clone(), c.slot.lock().is_ok_and(|k| k.is_some()))).collect();
        list.sort_by_key(|(_, info, _)| info.since);
        list
    }

    /// Forwards a client's cancel request; unknown keys are ignored, as Postgres does.
    pub async fn cancel(&self, pid: i32, secret: i32) {
        let key = {
            let clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
            match clients.get(&pid) {
                Some(c) if c.secret == secret => c.slot.lock().ok().and_then(|k| k.clone()),
                _ => None,
            }
        };
        match key {
            Some(key) => {
                if let Err(e) = send(&key).await {
                    tracing::warn!("cancel request to {} failed: {e}", key.addr);
                }
            }
            None => tracing::debug!("cancel request for pid {pid}: nothing running or key mismatch"),
        }
    }
}

/// Sends a CancelRequest to a backend server.
pub async fn send(key: &BackendKey) -> std::io::Result<()> {
    let mut buf = BytesMut::new();
    frontend::cancel_request(key.pid, key.secret, &mut buf);
    let mut stream = TcpStream::connect(&*key.addr).await?;
    stream.write_all(&buf).await?;
    stream.shutdown().await
}
