//! Client authentication: SCRAM-SHA-256 (pgwire's server state machine),
//! md5, cleartext, and trust for loopback clients.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use pgwire::api::auth::sasl::scram::{ScramSecret, ScramServerAuth, gen_salted_password};
use pgwire::messages::startup::Authentication;

use super::wire::{ClientConn, reply};
use crate::config::{AuthMethod, User};
use crate::sqlerror::{SqlError, code};

const SCRAM_ITERATIONS: usize = 4096;
const SCRAM_SHA_256: &str = "SCRAM-SHA-256";

/// What a user's password is checked against, prepared once at startup.
#[derive(Clone)]
pub enum Secret {
    Trust,
    Scram {
        salt: Vec<u8>,
        iterations: usize,
        stored_key: Vec<u8>,
        server_key: Vec<u8>,
    },
    /// `md5` + hex(md5(password || user)), as Postgres stores it.
    Md5(String),
    Cleartext(String),
}

impl Secret {
    /// Prepares the secret for `method` from the configured password, which
    /// may be cleartext, a SCRAM verifier or an md5 hash.
    pub fn parse(user: &str, password: &str, method: AuthMethod) -> Result<Secret, String> {
        let is_verifier = password.starts_with("SCRAM-SHA-256$");
        let is_md5 = password.len() == 35 && password.starts_with("md5");
        match method {
            AuthMethod::ScramSha256 if is_verifier => parse_verifier(password),
            AuthMethod::ScramSha256 => {
                let salt: [u8; 16] = rand::random();
                let salted = gen_salted_password(password, &salt, SCRAM_ITERATIONS);
                match ScramSecret::verifier_from_salted_password(salt.to_vec(), salted, SCRAM_ITERATIONS) {
                    ScramSecret::Verifier { salt, iterations, stored_key, server_key } => {
                        Ok(Secret::Scram { salt, iterations, stored_key, server_key })
                    }
                    ScramSecret::SaltedPassword { .. } => Err("could not derive a SCRAM verifier".into()),
                }
            }
            AuthMethod::Md5 if is_md5 => Ok(Secret::Md5(password.to_string())),
            AuthMethod::Md5 if is_verifier => {
                Err("md5 needs the cleartext password or its md5 hash, not a SCRAM verifier".into())
            }
            AuthMethod::Md5 => Ok(Secret::Md5(format!("md5{:x}", md5::compute(format!("{password}{user}"))))),
            AuthMethod::Cleartext if is_verifier || is_md5 => {
                Err("auth = \"password\" needs the cleartext password".into())
            }
            AuthMethod::Cleartext => Ok(Secret::Cleartext(password.to_string())),
        }
    }

    pub fn for_user(user: &User) -> Result<Secret, String> {
        match &user.password {
            Some(pw) => Secret::parse(&user.name, pw, user.method()),
            None => Ok(Secret::Trust),
        }
    }
}

/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, as in pg_authid.
fn parse_verifier(v: &str) -> Result<Secret, String> {
    let bad = || "not a valid SCRAM-SHA-256 verifier (SCRAM-SHA-256$<iter>:<salt>$<stored>:<server>)".to_string();
    let rest = v.strip_prefix("SCRAM-SHA-256$").ok_or_else(bad)?;
    let (params, keys) = rest.split_once('$').ok_or_else(bad)?;
    let (iterations, salt) = params.split_once(':').ok_or_else(bad)?;
    let (stored, server) = keys.split_once(':').ok_or_else(bad)?;
    let decode = |s: &str| STANDARD.decode(s).map_err(|_| bad());
    Ok(Secret::Scram {
        iterations: iterations.parse().map_err(|_| bad())?,
        salt: decode(salt)?,
        stored_key: decode(stored)?,
        server_key: decode(server)?,
    })
}

fn failed(user: &str) -> SqlError {
    SqlError::fatal(code::INVALID_PASSWORD, format!("password authentication failed for user \"{user}\""))
}

async fn flush_and_read(client: &mut ClientConn) -> Result<pgwire::messages::startup::PasswordMessageFamily, SqlError> {
    client.flush().await?;
    client
        .read_password()
        .await?
        .ok_or_else(|| SqlError::fatal(code::PROTOCOL_VIOLATION, "connection closed during authentication"))
}

/// Runs the exchange for `secret`; on success AuthenticationOk has been queued.
pub async fn authenticate(client: &mut ClientConn, user: &str, secret: &Secret) -> Result<(), SqlError> {
    match secret {
        Secret::Trust => {
            if !client.peer_is_loopback() {
                return Err(SqlError::fatal(
                    code::INVALID_AUTHORIZATION,
                    format!("user \"{user}\" is trust-only and may connect from localhost only"),
                ));
            }
        }
        Secret::Cleartext(expected) => {
            reply::auth(&mut client.out, Authentication::CleartextPassword);
            let given = flush_and_read(client).await?.into_password().map_err(|_| failed(user))?;
            if !constant_time_eq(given.password.as_bytes(), expected.as_bytes()) {
                return Err(failed(user));
            }
        }
        Secret::Md5(stored) => {
            let salt: [u8; 4] = rand::random();
            reply::auth(&mut client.out, Authentication::MD5Password(salt.to_vec()));
            let given = flush_and_read(client).await?.into_password().map_err(|_| failed(user))?;
            let mut salted = stored.as_bytes()[3..].to_vec();
            salted.extend_from_slice(&salt);
            let expected = format!("md5{:x}", md5::compute(salted));
            if !constant_time_eq(given.password.as_bytes(), expected.as_bytes()) {
                return Err(failed(user));
            }
        }
        Secret::Scram { salt, iterations, stored_key, server_key } => {
            reply::auth(&mut client.out, Authentication::SASL(vec![SCRAM_SHA_256.into()]));
            let first = flush_and_read(client).await?.into_sasl_initial_response().map_err(|_| failed(user))?;
            if first.auth_method != SCRAM_SHA_256 {
                return Err(SqlError::fatal(
                    code::INVALID_AUTHORIZATION,
                    format!("SASL mechanism {} is not supported; use {SCRAM_SHA_256}", first.auth_method),
                ));
            }
            let secret = ScramSecret::Verifier {
                salt: salt.clone(),
                iterations: *iterations,
                stored_key: stored_key.clone(),
                server_key: server_key.clone(),
            };
            let data = first.data.unwrap_or_default();
            let (server_first, waiting) =
                ScramServerAuth::new().on_client_first_message_with_secret(&data, secret).map_err(|_| failed(user))?;
            reply::auth(&mut client.out, Authentication::SASLContinue(server_first.into()));
            let last = flush_and_read(client).await?.into_sasl_response().map_err(|_| failed(user))?;
            let server_final = waiting.on_client_final_message(&last.data).map_err(|_| failed(user))?;
            reply::auth(&mut client.out, Authentication::SASLFinal(server_final.into()));
        }
    }
    reply::auth(&mut client.out, Authentication::Ok);
    Ok(())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifier_round_trip() {
        let v = "SCRAM-SHA-256$4096:c2FsdHNhbHRzYWx0$c3RvcmVkc3RvcmVkc3RvcmVkc3RvcmVkc3RvcmVkMTI=:c2VydmVyc2VydmVyc2VydmVyc2VydmVyc2VydmVyMTI=";
        match Secret::parse("u", v, AuthMethod::ScramSha256).unwrap() {
            Secret::Scram { iterations, salt, .. } => {
                assert_eq!(iterations, 4096);
                assert_eq!(salt, b"saltsaltsalt");
            }
            _ => panic!("expected a SCRAM secret"),
        }
        assert!(Secret::parse("u", "SCRAM-SHA-256$oops", AuthMethod::ScramSha256).is_err());
    }

    #[test]
    fn md5_secret_matches_postgres_format() {
        // md5('secret' || 'app') as stored by Postgres with password_encryption = md5.
        let Secret::Md5(h) = Secret::parse("app", "secret", AuthMethod::Md5).unwrap() else { panic!() };
        assert_eq!(h, format!("md5{:x}", md5::compute("secretapp")));
        assert!(matches!(Secret::parse("app", &h, AuthMethod::Md5), Ok(Secret::Md5(same)) if same == h));
    }
}
