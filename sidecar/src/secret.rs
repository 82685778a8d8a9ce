//! What a configured user's password is checked against: the cleartext
//! password, its md5 hash or a SCRAM verifier, prepared once at startup
//! (and checked by `shardcar check`).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use pgwire::api::auth::sasl::scram::{ScramSecret, gen_salted_password};
use serde::Deserialize;

const SCRAM_ITERATIONS: usize = 4096;

/// How a user proves who it is (`users[].auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum AuthMethod {
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    #[serde(rename = "md5")]
    Md5,
    #[serde(rename = "password")]
    Cleartext,
}

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
    /// What a user not in the config is "checked" against: a SCRAM exchange
    /// that always fails, with a salt stable per name within this process,
    /// so that an unknown user and a wrong password look alike (Postgres
    /// does the same, against user enumeration).
    pub fn unknown_user(user: &str) -> Secret {
        use sha2::{Digest, Sha256};
        static NONCE: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
        let nonce = NONCE.get_or_init(rand::random);
        let salt = Sha256::new().chain_update(nonce).chain_update(user.as_bytes()).finalize()[..16].to_vec();
        let unguessable = || rand::random::<[u8; 32]>().to_vec();
        Secret::Scram { salt, iterations: SCRAM_ITERATIONS, stored_key: unguessable(), server_key: unguessable() }
    }

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
