//! Frontend: the Postgres protocol server side — a client's startup,
//! authentication and session.

pub mod auth;
pub mod console;
pub mod session;

use std::collections::BTreeMap;
use std::sync::Arc;

use pgwire::messages::startup::Startup;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use crate::cancel::{ClientInfo, Registration};
use crate::passthrough::UserLogin;
use crate::policy::facts::SessionInfo;
use crate::secret::Secret;
use crate::settings::Settings;
use crate::shared::Shared;
use crate::sqlerror::{SqlError, code};
use crate::wire::{ClientConn, StartupPacket, reply};
use session::Session;

/// Serves one client connection from its first byte to its last.
pub async fn serve(shared: Arc<Shared>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let metrics = &shared.telemetry.metrics;
    let limits = shared.limits.clone();
    let received = metrics.client_bytes_received.clone();
    let mut client = ClientConn::new(stream, received, metrics.client_bytes_sent.clone(), limits.clone());
    // Logging in holds a slot of its own, for at most the login timeout: a
    // logged-in client's slot is taken only once authentication succeeded,
    // so half-open logins cannot keep real clients out.
    let Ok(login) = limits.logins.clone().try_acquire_owned() else {
        limits.hit("pending_logins");
        let e = SqlError::fatal(code::TOO_MANY_CONNECTIONS, "sorry, too many clients are logging in already")
            .hint("raise listen.max_pending_logins; clients that do not finish logging in are cut off after listen.login_timeout_ms");
        return refuse(&shared, &mut client, e).await;
    };
    // Boxed, so that the session's task does not keep authentication's room.
    let started = tokio::time::timeout(limits.login_timeout, Box::pin(startup(&shared, &mut client))).await;
    drop(login);
    match started {
        Ok(Ok(Some(LoggedIn { slot, registration, settings, info, login }))) => {
            shared.telemetry.metrics.clients_accepted.inc();
            let _connected = Connected::count(&shared.telemetry.metrics.clients_connected);
            if info.database == console::DATABASE {
                console::serve(&shared, client).await;
            } else {
                Session::new(shared, client, registration, settings, info, login).run().await;
            }
            drop(slot);
        }
        Ok(Ok(None)) => {}
        Ok(Err(e)) => refuse(&shared, &mut client, e).await,
        Err(_) => {
            limits.hit("login_timeout");
            let e = SqlError::fatal(code::QUERY_CANCELED, "canceling authentication due to timeout").hint(
                "the client must send its startup packet and finish authenticating within listen.login_timeout_ms",
            );
            refuse(&shared, &mut client, e).await;
        }
    }
}

/// Turns a client away before its session starts, with why.
async fn refuse(shared: &Shared, client: &mut ClientConn, e: SqlError) {
    shared.telemetry.metrics.clients_refused.inc();
    tracing::debug!("client refused at startup: {e}");
    // Nothing queued (an AuthenticationOk before the slot check) goes out before the error.
    client.out.clear();
    reply::error(&mut client.out, &e);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), client.flush()).await;
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
async fn startup(shared: &Arc<Shared>, client: &mut ClientConn) -> Result<Option<LoggedIn>, SqlError> {
    let (mut ssl_answered, mut gss_refused) = (false, false);
    let startup = loop {
        match client.read_startup().await? {
            None => return Ok(None),
            // Without a certificate TLS is refused and the client goes on in clear.
            Some(StartupPacket::Ssl) if !ssl_answered => {
                ssl_answered = true;
                match &shared.client_tls {
                    Some(tls) => client.start_tls(tls.acceptor()).await?,
                    None => client.write_byte(b'N').await?,
                }
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
    let listen = &shared.config.listen;
    if listen.require_tls && client.encryption().is_none() && !(listen.plain_loopback && client.peer_is_loopback()) {
        return Err(SqlError::fatal(
            code::INVALID_AUTHORIZATION,
            format!("shardcar accepts only TLS connections from {}", client.peer()),
        )
        .hint("connect with sslmode=require (or verify-full)"));
    }
    let database = startup.parameters.get("database").cloned();
    let (user, params) = startup_parameters(client, startup)?;
    let (secret, looked_up) = match (shared.secrets.get(&user), &shared.auth_query) {
        (Some(secret), _) => (secret.get(), false),
        (None, Some(query)) => match query.lookup(&shared.pools, &user).await? {
            Some(secret) => (secret, true),
            None => (unknown_user(&user), false),
        },
        (None, None) => (unknown_user(&user), false),
    };
    let proof = auth::authenticate(client, &user, &secret).await?;
    // Passthrough: this user's statements run on connections of its own.
    let login = match (looked_up && shared.config.auth.passthrough, proof) {
        (true, Some(proof)) => Some(Arc::new(UserLogin { user: user.clone(), proof })),
        (true, None) => {
            return Err(SqlError::fatal(
                code::INVALID_AUTHORIZATION,
                format!("user \"{user}\" cannot be passed through to the shards: no SCRAM or md5 proof"),
            ));
        }
        (false, _) => None,
    };
    let Ok(slot) = shared.limits.slots.clone().try_acquire_owned() else {
        shared.limits.hit("client_slots");
        return Err(SqlError::fatal(code::TOO_MANY_CONNECTIONS, "sorry, too many clients already")
            .hint("raise listen.max_client_connections, or pool clients in the application"));
    };

    let console = database.as_deref() == Some(console::DATABASE);
    if console && !shared.config.users.iter().any(|u| u.name == user && u.console) {
        return Err(SqlError::fatal(
            code::INVALID_AUTHORIZATION,
            format!("user \"{user}\" may not use the admin console"),
        )
        .hint("set console = true on the user's [[users]] entry"));
    }
    // The console answers with every shard down: it asks none of them.
    let server = if console {
        console::server_params(shared)
    } else {
        shared.pools.server_params().await.map_err(|e| SqlError { fatal: true, ..e })?
    };
    for (name, value) in &server {
        let value =
            params.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map_or(value.as_str(), |(_, v)| v.as_str());
        reply::parameter_status(&mut client.out, name, value);
    }
    let info = SessionInfo {
        database: database.unwrap_or_else(|| user.clone()),
        application_name: params.get("application_name").cloned().unwrap_or_default(),
        user,
        vars: Default::default(),
    };
    let registration = shared.cancels.register(ClientInfo {
        user: info.user.clone(),
        database: info.database.clone(),
        application_name: info.application_name.clone(),
        address: client.peer(),
        since: std::time::SystemTime::now(),
    });
    reply::backend_key(&mut client.out, registration.pid, registration.secret);
    reply::ready(&mut client.out, b'I');
    client.flush().await?;
    // The configured query timeout is a default the client's own (startup or SET) overrides.
    let query_timeout = shared.config.pool.query_timeout_ms;
    let mut startup_settings = params.clone();
    if query_timeout > 0 && !params.keys().any(|k| k.eq_ignore_ascii_case("statement_timeout")) {
        startup_settings.insert("statement_timeout".into(), format!("{query_timeout}ms"));
    }
    let settings = Settings::from_startup(startup_settings.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    Ok(Some(LoggedIn { slot, registration, settings, info, login }))
}

/// What a user not in `[[users]]` nor found by `[auth] query` is checked against.
fn unknown_user(user: &str) -> Arc<Secret> {
    tracing::info!("login as \"{user}\", who is not in shardcar's [[users]]");
    Arc::new(Secret::unknown_user(user))
}

/// A client past authentication: its slot, cancel key, settings, who it
/// is, and (passthrough) how it logs in to the shards.
struct LoggedIn {
    slot: OwnedSemaphorePermit,
    registration: Registration,
    settings: Settings,
    info: SessionInfo,
    login: Option<Arc<UserLogin>>,
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
