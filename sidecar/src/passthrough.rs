//! Passthrough: a client looked up with `[auth] query` logs in to the shards
//! as itself, with what its own login proved. For md5 that is the stored
//! hash, which answers any md5 challenge. For SCRAM-SHA-256 it is the
//! ClientKey, recovered from the client's proof (proof XOR
//! HMAC(StoredKey, AuthMessage)); with the verifier's ServerKey it answers
//! a shard's SCRAM exchange when the shard holds the same verifier (same
//! salt and iterations), as PgBouncer does with auth_query users. The
//! client's password itself is never known to shardcar.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

/// Who a session logs in to the shards as, and with what.
#[derive(Clone)]
pub struct UserLogin {
    pub user: String,
    pub proof: Proof,
}

impl UserLogin {
    /// The same user with the same credentials (a changed password makes a
    /// new pool, so no connection is made with stale ones).
    pub fn same_as(&self, other: &UserLogin) -> bool {
        self.user == other.user
            && match (&self.proof, &other.proof) {
                (Proof::Md5(a), Proof::Md5(b)) => a == b,
                (Proof::Scram(a), Proof::Scram(b)) => a.client_key == b.client_key && a.server_key == b.server_key,
                _ => false,
            }
    }
}

#[derive(Clone)]
pub enum Proof {
    /// `md5` + hex(md5(password || user)), as pg_authid stores it.
    Md5(String),
    Scram(ScramKeys),
}

#[derive(Clone)]
pub struct ScramKeys {
    pub client_key: Vec<u8>,
    pub server_key: Vec<u8>,
    pub salt: Vec<u8>,
    pub iterations: usize,
}

fn hmac(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

fn xor(a: &[u8], b: &[u8]) -> Vec<u8> {
    a.iter().zip(b).map(|(x, y)| x ^ y).collect()
}

/// `client-final-message-without-proof` and the proof, from a client-final message.
fn split_proof(client_final: &[u8]) -> Option<(&[u8], Vec<u8>)> {
    let text = std::str::from_utf8(client_final).ok()?;
    let at = text.rfind(",p=")?;
    let proof = STANDARD.decode(&text[at + 3..]).ok()?;
    Some((&client_final[..at], proof))
}

/// The ClientKey a client proved it has, from the messages of an exchange
/// that succeeded: `client_first` with its GS2 header, `server_first`, and
/// `client_final` with its proof. None if they do not hang together.
pub fn client_key(stored_key: &[u8], client_first: &[u8], server_first: &[u8], client_final: &[u8]) -> Option<Vec<u8>> {
    // The bare first message follows the GS2 header `n,,` (or `y,,`, `n,a=...,`).
    let header_end = client_first.iter().enumerate().filter(|(_, b)| **b == b',').nth(1)?.0;
    let bare = &client_first[header_end + 1..];
    let (without_proof, proof) = split_proof(client_final)?;
    let auth_message = [bare, b",", server_first, b",", without_proof].concat();
    let key = xor(&proof, &hmac(stored_key, &auth_message));
    (Sha256::digest(&key).as_slice() == stored_key).then_some(key)
}

/// The answer to a shard's md5 challenge, from the stored hash.
pub fn md5_response(stored: &str, salt: [u8; 4]) -> String {
    let mut salted = stored.as_bytes()[3..].to_vec();
    salted.extend_from_slice(&salt);
    format!("md5{:x}", md5::compute(salted))
}

/// The client side of one SCRAM-SHA-256 exchange, proving with keys
/// rather than a password.
pub struct ScramClient<'a> {
    keys: &'a ScramKeys,
    nonce: String,
    auth_message: Vec<u8>,
}

impl<'a> ScramClient<'a> {
    pub fn new(keys: &'a ScramKeys) -> ScramClient<'a> {
        let nonce = STANDARD.encode(rand::random::<[u8; 18]>());
        ScramClient { keys, nonce, auth_message: Vec::new() }
    }

    /// client-first-message: no channel binding, the user from the startup packet.
    pub fn first(&self) -> Vec<u8> {
        format!("n,,n=,r={}", self.nonce).into_bytes()
    }

    /// client-final-message for the server's first message.
    pub fn finish(&mut self, server_first: &[u8]) -> Result<Vec<u8>, String> {
        let text = std::str::from_utf8(server_first).map_err(|_| "the server's SCRAM message is not UTF-8")?;
        let (mut nonce, mut salt, mut iterations) = (None, None, None);
        for part in text.split(',') {
            match part.split_at_checked(2) {
                Some(("r=", v)) => nonce = Some(v),
                Some(("s=", v)) => salt = STANDARD.decode(v).ok(),
                Some(("i=", v)) => iterations = v.parse::<usize>().ok(),
                _ => {}
            }
        }
        let nonce = nonce.filter(|n| n.starts_with(&self.nonce)).ok_or("the server's SCRAM nonce is not ours")?;
        if salt.as_deref() != Some(&self.keys.salt[..]) || iterations != Some(self.keys.iterations) {
            return Err("the user's SCRAM verifier on this server differs from the one shardcar checked the \
                        client against (another salt or iteration count): give the role the same verifier \
                        on every shard"
                .into());
        }
        let without_proof = format!("c=biws,r={nonce}");
        let bare = format!("n=,r={}", self.nonce);
        self.auth_message = [bare.as_bytes(), b",", server_first, b",", without_proof.as_bytes()].concat();
        let stored_key = Sha256::digest(&self.keys.client_key);
        let proof = xor(&self.keys.client_key, &hmac(&stored_key, &self.auth_message));
        Ok(format!("{without_proof},p={}", STANDARD.encode(proof)).into_bytes())
    }

    /// Checks the server's signature: it too holds the verifier.
    pub fn verify(&self, server_final: &[u8]) -> Result<(), String> {
        let expected = format!("v={}", STANDARD.encode(hmac(&self.keys.server_key, &self.auth_message)));
        if server_final == expected.as_bytes() {
            Ok(())
        } else {
            Err("the server's SCRAM signature does not match".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys as Postgres derives them from a password.
    fn keys(password: &str, salt: &[u8], iterations: usize) -> (ScramKeys, Vec<u8>) {
        let salted = pgwire::api::auth::sasl::scram::gen_salted_password(password, salt, iterations);
        let client_key = hmac(&salted, b"Client Key");
        let server_key = hmac(&salted, b"Server Key");
        let stored_key = Sha256::digest(&client_key).to_vec();
        (ScramKeys { client_key, server_key, salt: salt.to_vec(), iterations }, stored_key)
    }

    /// The nonce of a client-first message (`n,,n=,r=<nonce>`): after the
    /// first `,r=`, as a nonce holds no comma (it may hold `r=`: splitting
    /// at the last one failed this test about once in 400 runs).
    fn nonce_of(client_first: &[u8]) -> String {
        std::str::from_utf8(client_first).unwrap().split_once(",r=").unwrap().1.to_string()
    }

    #[test]
    fn a_client_key_recovered_from_a_proof_answers_the_next_exchange() {
        let (keys, stored_key) = keys("pencil", b"0123456789abcdef", 4096);
        // A client that knows the password, through postgres-protocol's client.
        let mut real = postgres_protocol::authentication::sasl::ScramSha256::new(
            b"pencil",
            postgres_protocol::authentication::sasl::ChannelBinding::unsupported(),
        );
        let client_first = real.message().to_vec();
        let client_nonce = nonce_of(&client_first);
        let server_first =
            format!("r={client_nonce}srv,s={},i=4096", STANDARD.encode(b"0123456789abcdef")).into_bytes();
        real.update(&server_first).unwrap();
        let client_final = real.message().to_vec();
        let recovered = client_key(&stored_key, &client_first, &server_first, &client_final).unwrap();
        assert_eq!(recovered, keys.client_key);
        // A tampered proof recovers nothing.
        let mut tampered = client_final.clone();
        let last = tampered.len() - 3;
        tampered[last] ^= 1;
        assert_eq!(client_key(&stored_key, &client_first, &server_first, &tampered), None);

        // shardcar's own client, with the recovered key, against a server check.
        let keys = ScramKeys { client_key: recovered, ..keys };
        let mut ours = ScramClient::new(&keys);
        let first = ours.first();
        let nonce = nonce_of(&first);
        let server_first = format!("r={nonce}xyz,s={},i=4096", STANDARD.encode(b"0123456789abcdef")).into_bytes();
        let final_message = ours.finish(&server_first).unwrap();
        let bare_first = &first[3..];
        let again = client_key(&stored_key, &[b"n,,", bare_first].concat(), &server_first, &final_message);
        assert_eq!(again.as_deref(), Some(&keys.client_key[..]));
        let mut other = ScramClient::new(&keys);
        let first = other.first();
        let nonce = nonce_of(&first);
        let other_salt = format!("r={nonce}xyz,s={},i=4096", STANDARD.encode(b"another salt....")).into_bytes();
        assert!(other.finish(&other_salt).unwrap_err().contains("same verifier"));
    }

    #[test]
    fn md5_answer_is_postgres_md5_of_the_stored_hash_and_salt() {
        let stored = format!("md5{:x}", md5::compute("secretapp"));
        let expected = postgres_protocol::authentication::md5_hash(b"app", b"secret", [1, 2, 3, 4]);
        assert_eq!(md5_response(&stored, [1, 2, 3, 4]), expected);
    }
}
