//! Frontend: the Postgres protocol server side — a client's startup,
//! authentication and session.

pub mod auth;
pub mod session;

use std::collections::BTreeMap;
use std::sync::Arc;

use pgwire::messages::startup::Startup;
use tokio::net::TcpStream;

use crate::cancel::Registration;
use crate::policy::facts::SessionInfo;
use crate::settings::Settings;
use crate::shared::Shared;
use crate::sqlerror::{SqlError, code};
use crate::wire::{ClientConn, StartupPacket, reply};
use session::Session;

/// Serves one client connection from its first byte to its last.
pub async fn serve(shared: Arc<Shared>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let metrics = &shared.telemetry.metrics;
    let mut client = ClientConn::new(stream, metrics.client_bytes_received.clone(), metrics.client_bytes_sent.clone());
    let Ok(permit) = shared.client_slots.clone().try_acquire_owned() else {
        metrics.clients_refused.inc();
        let e = SqlError::fatal(code::TOO_MANY_CONNECTIONS, "sorry, too many clients already")
            .hint("raise listen.max_client_connections, or pool clients in the application");
        reply::error(&mut client.out, &e);
        let _ = client.flush().await;
        return;
    };
    // Boxed, so that the session's task does not keep authentication's room.
    match Box::pin(startup(&shared, &mut client)).await {
        Ok(Some((registration, settings, info))) => {
            shared.telemetry.metrics.clients_accepted.inc();
            let _connected = Connected::count(&shared.telemetry.metrics.clients_connected);
            Session::new(shared, client, registration, settings, info).run().await;
        }
        Ok(None) => {}
        Err(e) => {
            shared.telemetry.metrics.clients_refused.inc();
            tracing::debug!("client refused at startup: {e}");
            reply::error(&mut client.out, &e);
            let _ = client.flush().await;
        }
    }
    drop(permit);
}

/// Counts an open client connection until dropped, however the session ends.
struct Connected(prometheus::IntGauge);

impl Connected {
    fn count(gauge: &prometheus::IntGauge) -> Connected {
        gauge.inc();
        Connected(gauge.clone())
    }
}

impl Drop for Connected {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Startup and authentication; `None` when the connection was a cancel
/// request or closed early.
async fn startup(
    shared: &Arc<Shared>,
    client: &mut ClientConn,
) -> Result<Option<(Registration, Settings, SessionInfo)>, SqlError> {
    let (mut ssl_refused, mut gss_refused) = (false, false);
    let startup = loop {
        match client.read_startup().await? {
            None => return Ok(None),
            // TLS is not offered yet: refuse, and the client continues in clear.
            Some(StartupPacket::Ssl) if !ssl_refused => {
                ssl_refused = true;
                client.write_byte(b'N').await?;
            }
            Some(StartupPacket::Gss) if !gss_refused => {
                gss_refused = true;
                client.write_byte(b'N').await?;
            }
            Some(StartupPacket::Ssl | StartupPacket::Gss) => {
                return Err(SqlError::fatal(code::PROTOCOL_VIOLATION, "encryption requested twice"));
            }
            Some(StartupPacket::Cancel(c)) => {
                if let Some(secret) = c.secret_key.as_i32() {
                    shared.cancels.cancel(c.pid, secret).await;
                }
                return Ok(None);
            }
            Some(StartupPacket::Startup(s)) => break s,
        }
    };
    let database = startup.parameters.get("database").cloned();
    let (user, params) = startup_parameters(client, startup)?;
    let secret = shared.secrets.get(&user).ok_or_else(|| {
        SqlError::fatal(code::INVALID_AUTHORIZATION, format!("user \"{user}\" is not in shardcar's [[users]]"))
            .hint("add it to the config, or connect as a configured user")
    })?;
    auth::authenticate(client, &user, secret).await?;

    let server = shared.pools.server_params().await.map_err(|e| SqlError { fatal: true, ..e })?;
    for (name, value) in &server {
        let value =
            params.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map_or(value.as_str(), |(_, v)| v.as_str());
        reply::parameter_status(&mut client.out, name, value);
    }
    let registration = shared.cancels.register();
    reply::backend_key(&mut client.out, registration.pid, registration.secret);
    reply::ready(&mut client.out, b'I');
    client.flush().await?;
    let settings = Settings::from_startup(params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let info = SessionInfo {
        database: database.unwrap_or_else(|| user.clone()),
        application_name: params.get("application_name").cloned().unwrap_or_default(),
        user,
        vars: Default::default(),
    };
    Ok(Some((registration, settings, info)))
}

/// The user name and the settings a startup packet asks for.
fn startup_parameters(
    client: &mut ClientConn,
    startup: Startup,
) -> Result<(String, BTreeMap<String, String>), SqlError> {
    let mut params = startup.parameters;
    let user = params.remove("user").filter(|u| !u.is_empty()).ok_or_else(|| {
        SqlError::fatal(code::INVALID_AUTHORIZATION, "no PostgreSQL user name specified in startup packet")
    })?;
    // One logical database: the name is accepted as given.
    params.remove("database");
    if params.remove("replication").is_some_and(|r| r != "false" && r != "0" && r != "off") {
        return Err(SqlError::fatal(
            code::FEATURE_NOT_SUPPORTED,
            "replication connections are not supported by shardcar",
        )
        .hint("connect to the shard directly for replication"));
    }
    let unsupported: Vec<String> = params.keys().filter(|k| k.starts_with("_pq_.")).cloned().collect();
    for k in &unsupported {
        params.remove(k);
    }
    if startup.protocol_number_minor > 0 || !unsupported.is_empty() {
        // Protocol 3.0 is what shardcar speaks; libpq accepts the downgrade.
        reply::negotiate_protocol(&mut client.out, unsupported);
    }
    if let Some(options) = params.remove("options") {
        for (k, v) in parse_options(&options)? {
            params.insert(k, v);
        }
    }
    Ok((user, params))
}

/// `-c name=value` and `--name=value` settings from the `options` parameter.
fn parse_options(options: &str) -> Result<Vec<(String, String)>, SqlError> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => word.extend(chars.next()),
            c if c.is_whitespace() => words.extend((!word.is_empty()).then(|| std::mem::take(&mut word))),
            c => word.push(c),
        }
    }
    words.extend((!word.is_empty()).then_some(word));
    let mut out = Vec::new();
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        let pair = match w.as_str() {
            "-c" => it.next(),
            _ => w.strip_prefix("-c").or_else(|| w.strip_prefix("--")).map(str::to_string),
        };
        let Some((k, v)) = pair.as_deref().and_then(|p| p.split_once('=')) else {
            return Err(SqlError::fatal(code::FEATURE_NOT_SUPPORTED, format!("unsupported startup option `{w}`"))
                .hint("only -c name=value and --name=value are supported in options"));
        };
        out.push((k.replace('-', "_"), v.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::parse_options;

    #[test]
    fn options_forms() {
        let got = parse_options("-c search_path=app -cstatement_timeout=5s --work-mem=4MB -c x=a\\ b").unwrap();
        let want = [("search_path", "app"), ("statement_timeout", "5s"), ("work_mem", "4MB"), ("x", "a b")];
        assert_eq!(got, want.map(|(k, v)| (k.to_string(), v.to_string())));
        assert!(parse_options("-X").is_err());
    }
}
