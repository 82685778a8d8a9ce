//! The messages that start every statement (Query; Parse, Bind, Describe
//! and Execute; and Close), read in place. Through the codec each cost a copy of the
//! frame and a lossy UTF-8 decode that then had to be checked again (text
//! that is not UTF-8 is refused, never routed as one text and forwarded as
//! another); here a Bind's parameters are slices of the frame itself.

use bytes::Bytes;
use pgwire::messages::extendedquery::{Bind, Close, Describe, Parse};

use super::printable;
use crate::sqlerror::{SqlError, code};

/// A frame's fields, read front to back; reading past its end, or leaving
/// bytes after it, is a protocol error, as on Postgres.
struct Fields<'a> {
    raw: &'a Bytes,
    at: usize,
}

impl<'a> Fields<'a> {
    fn new(raw: &'a Bytes) -> Self {
        Fields { raw, at: 5 }
    }

    fn truncated(&self) -> SqlError {
        malformed(self.raw[0], "truncated")
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], SqlError> {
        let raw: &'a [u8] = self.raw;
        let field = raw.get(self.at..self.at + n).ok_or_else(|| self.truncated())?;
        self.at += n;
        Ok(field)
    }

    fn cstring(&mut self, what: &str) -> Result<&'a str, SqlError> {
        let raw: &'a [u8] = self.raw;
        let rest = &raw[self.at..];
        let end = memchr::memchr(0, rest).ok_or_else(|| self.truncated())?;
        let text = std::str::from_utf8(&rest[..end]).map_err(|_| not_utf8(what))?;
        self.at += end + 1;
        Ok(text)
    }

    /// A name, `None` when empty (the unnamed statement or portal).
    fn name(&mut self, what: &str) -> Result<Option<String>, SqlError> {
        self.cstring(what).map(|n| (!n.is_empty()).then(|| n.to_owned()))
    }

    fn u16(&mut self) -> Result<u16, SqlError> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    fn i16s(&mut self) -> Result<Vec<i16>, SqlError> {
        let n = self.u16()? as usize;
        Ok(self.take(2 * n)?.chunks_exact(2).map(|c| i16::from_be_bytes([c[0], c[1]])).collect())
    }

    fn i32(&mut self) -> Result<i32, SqlError> {
        self.take(4).map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A value of `len` bytes (-1: NULL), sharing the frame's memory.
    fn value(&mut self) -> Result<Option<Bytes>, SqlError> {
        match self.i32()? {
            -1 => Ok(None),
            len => {
                let len = usize::try_from(len).map_err(|_| malformed(self.raw[0], format!("value length {len}")))?;
                let start = self.at;
                self.take(len)?;
                Ok(Some(self.raw.slice(start..start + len)))
            }
        }
    }

    fn end(self) -> Result<(), SqlError> {
        match self.raw.len() - self.at {
            0 => Ok(()),
            left => Err(malformed(self.raw[0], format!("{left} bytes after its end"))),
        }
    }
}

/// A Query's text.
pub(super) fn query(raw: &Bytes) -> Result<String, SqlError> {
    let mut f = Fields::new(raw);
    let text = f.cstring("statement text")?.to_owned();
    f.end()?;
    Ok(text)
}

/// A Parse: statement name, text and parameter types.
pub(super) fn parse(raw: &Bytes) -> Result<Parse, SqlError> {
    let mut f = Fields::new(raw);
    let name = f.name("statement name")?;
    let query = f.cstring("statement text")?.to_owned();
    let n = f.u16()? as usize;
    let oids = f.take(4 * n)?.chunks_exact(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]])).collect();
    f.end()?;
    Ok(Parse::new(name, query, oids))
}

/// A Bind: portal, statement, parameter formats and values, result formats.
pub(super) fn bind(raw: &Bytes) -> Result<Bind, SqlError> {
    let mut f = Fields::new(raw);
    let portal = f.name("portal name")?;
    let statement = f.name("statement name")?;
    let formats = f.i16s()?;
    let n = f.u16()? as usize;
    let values = (0..n).map(|_| f.value()).collect::<Result<Vec<_>, _>>()?;
    let result_formats = f.i16s()?;
    f.end()?;
    Ok(Bind::new(portal, statement, formats, values, result_formats))
}

/// A Describe: what it names (`S` statement, `P` portal; checked by the
/// caller) and its name. libpq sends one with every prepared execution.
pub(super) fn describe(raw: &Bytes) -> Result<Describe, SqlError> {
    let (target, name) = target(raw)?;
    Ok(Describe::new(target, name))
}

/// A Close: what it names and its name, as a Describe.
pub(super) fn close(raw: &Bytes) -> Result<Close, SqlError> {
    let (target, name) = target(raw)?;
    Ok(Close::new(target, name))
}

fn target(raw: &Bytes) -> Result<(u8, Option<String>), SqlError> {
    let mut f = Fields::new(raw);
    let target = f.take(1)?[0];
    let name = f.name(if target == b'P' { "portal name" } else { "statement name" })?;
    f.end()?;
    Ok((target, name))
}

/// An Execute's portal and row limit (none when zero or negative).
pub(super) fn execute(raw: &Bytes) -> Result<(String, usize), SqlError> {
    let mut f = Fields::new(raw);
    let portal = f.cstring("portal name")?.to_owned();
    let limit = f.i32()?;
    f.end()?;
    Ok((portal, usize::try_from(limit).unwrap_or(0)))
}

pub(super) fn malformed(tag: u8, why: impl std::fmt::Display) -> SqlError {
    SqlError::new(code::PROTOCOL_VIOLATION, format!("invalid {} message: {why}", printable(tag)))
}

fn not_utf8(what: &str) -> SqlError {
    SqlError::new(code::CHARACTER_NOT_IN_REPERTOIRE, format!("{what} is not valid UTF-8; shardcar reads SQL as UTF-8"))
        .hint("connect with client_encoding=UTF8")
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use pgwire::messages::Message;
    use pgwire::messages::extendedquery::Execute;

    use super::*;

    fn encoded(msg: &impl Message) -> Bytes {
        let mut buf = BytesMut::new();
        msg.encode(&mut buf).unwrap();
        buf.freeze()
    }

    /// What pgwire writes, read back field for field.
    #[test]
    fn reads_what_the_codec_writes() {
        let values = vec![Some(Bytes::from_static(b"42")), None, Some(Bytes::new())];
        let named = Bind::new(Some("p".into()), Some("s1".into()), vec![0, 1], values, vec![1]);
        assert_eq!(bind(&encoded(&named)).unwrap(), named);
        let unnamed = Bind::new(None, None, vec![], vec![], vec![]);
        assert_eq!(bind(&encoded(&unnamed)).unwrap(), unnamed);
        let typed = Parse::new(Some("s1".into()), "SELECT $1, 'é'".into(), vec![23, 0]);
        assert_eq!(parse(&encoded(&typed)).unwrap(), typed);
        let limited = Execute::new(Some("p".into()), 10);
        assert_eq!(execute(&encoded(&limited)).unwrap(), ("p".to_string(), 10));
        assert_eq!(execute(&encoded(&Execute::new(None, -1))).unwrap(), (String::new(), 0));
        let portal = Describe::new(b'P', Some("p".into()));
        assert_eq!(describe(&encoded(&portal)).unwrap(), portal);
        let statement = Describe::new(b'S', None);
        assert_eq!(describe(&encoded(&statement)).unwrap(), statement);
        let closed = Close::new(b'S', Some("s1".into()));
        assert_eq!(close(&encoded(&closed)).unwrap(), closed);
    }

    #[test]
    fn a_value_length_below_null_is_malformed() {
        let mut raw = encoded(&Bind::new(None, None, vec![], vec![Some(Bytes::from_static(b"1"))], vec![])).to_vec();
        // The value's length: after the tag, length, two empty names and the format count.
        raw[5 + 2 + 2 + 2..5 + 2 + 2 + 2 + 4].copy_from_slice(&(-2i32).to_be_bytes());
        let e = bind(&Bytes::from(raw)).unwrap_err();
        assert_eq!((e.code, e.message.as_str()), (code::PROTOCOL_VIOLATION, "invalid 'B' message: value length -2"));
    }
}
