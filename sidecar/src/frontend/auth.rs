//! Client authentication: SCRAM-SHA-256 (pgwire's server state machine),
//! md5, cleartext, and trust for loopback clients.

use pgwire::api::auth::sasl::scram::{ScramSecret, ScramServerAuth};
use pgwire::messages::startup::{Authentication, PasswordMessageFamily};

use crate::panics::caught;
use crate::passthrough::{Proof, ScramKeys, client_key};
use crate::secret::Secret;
use crate::sqlerror::{SqlError, code};
use crate::wire::{ClientConn, reply};

const SCRAM_SHA_256: &str = "SCRAM-SHA-256";

fn failed(user: &str) -> SqlError {
    SqlError::fatal(code::INVALID_PASSWORD, format!("password authentication failed for user \"{user}\""))
}

/// Sends what is queued and reads the client's answer as `what` (a
/// password, or a SASL message). pgwire reads those fields without bounds
/// checks: a panic on a malformed one is caught and is a protocol error.
async fn flush_and_read<T, E>(
    client: &mut ClientConn,
    what: impl FnOnce(PasswordMessageFamily) -> Result<T, E>,
) -> Result<T, SqlError> {
    client.flush().await?;
    let msg = client
        .read_password()
        .await?
        .ok_or_else(|| SqlError::fatal(code::PROTOCOL_VIOLATION, "connection closed during authentication"))?;
    match caught(|| what(msg)) {
        Ok(Ok(read)) => Ok(read),
        Ok(Err(_)) | Err(_) => Err(SqlError::fatal(code::PROTOCOL_VIOLATION, "invalid authentication message")),
    }
}

/// Runs the exchange for `secret`; on success AuthenticationOk has been
/// queued, and what the client proved is returned (for passthrough): the
/// stored md5 hash, or the SCRAM keys with the ClientKey it proved.
pub async fn authenticate(client: &mut ClientConn, user: &str, secret: &Secret) -> Result<Option<Proof>, SqlError> {
    let mut proof = None;
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
            let given = flush_and_read(client, PasswordMessageFamily::into_password).await?;
            if !constant_time_eq(given.password.as_bytes(), expected.as_bytes()) {
                return Err(failed(user));
            }
        }
        Secret::Md5(stored) => {
            let salt: [u8; 4] = rand::random();
            reply::auth(&mut client.out, Authentication::MD5Password(salt.to_vec()));
            let given = flush_and_read(client, PasswordMessageFamily::into_password).await?;
            let mut salted = stored.as_bytes()[3..].to_vec();
            salted.extend_from_slice(&salt);
            let expected = format!("md5{:x}", md5::compute(salted));
            if !constant_time_eq(given.password.as_bytes(), expected.as_bytes()) {
                return Err(failed(user));
            }
            proof = Some(Proof::Md5(stored.clone()));
        }
        Secret::Scram { salt, iterations, stored_key, server_key } => {
            reply::auth(&mut client.out, Authentication::SASL(vec![SCRAM_SHA_256.into()]));
            let first = flush_and_read(client, PasswordMessageFamily::into_sasl_initial_response).await?;
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
            // The SCRAM messages are the client's bytes too: a panic parsing them is a failed login.
            let (server_first, waiting) =
                caught(|| ScramServerAuth::new().on_client_first_message_with_secret(&data, secret))
                    .ok()
                    .and_then(Result::ok)
                    .ok_or_else(|| failed(user))?;
            reply::auth(&mut client.out, Authentication::SASLContinue(server_first.clone().into()));
            let last = flush_and_read(client, PasswordMessageFamily::into_sasl_response).await?;
            let server_final = caught(|| waiting.on_client_final_message(&last.data))
                .ok()
                .and_then(Result::ok)
                .ok_or_else(|| failed(user))?;
            reply::auth(&mut client.out, Authentication::SASLFinal(server_final.into()));
            proof = client_key(stored_key, &data, server_first.as_bytes(), &last.data).map(|client_key| {
                Proof::Scram(ScramKeys {
                    client_key,
                    server_key: server_key.clone(),
                    salt: salt.clone(),
                    iterations: *iterations,
                })
            });
        }
    }
    reply::auth(&mut client.out, Authentication::Ok);
    Ok(proof)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
