//! Reading and writing the backend messages a merge looks inside: the
//! columns of a DataRow, the fields of a RowDescription, a command tag.

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use pgwire::messages::data::{DataRow, FieldDescription};
use postgres_protocol::message::backend::Message;

use crate::sqlerror::{SqlError, code};
use crate::wire::encode;

/// The columns of a DataRow frame (type, length, count, then per column a
/// length and the bytes; -1 is NULL).
/// The whole messages (type byte, length, body) one after another in
/// `buf`; a truncated last one is left out.
pub fn split(mut buf: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let len = u32::from_be_bytes(buf.get(1..5)?.try_into().ok()?) as usize;
        let (frame, rest) = (buf.get(..1 + len)?, buf.get(1 + len..)?);
        buf = rest;
        Some(frame)
    })
}

pub fn columns(frame: &[u8]) -> Vec<Option<&[u8]>> {
    let mut out = Vec::new();
    let Some(count) = frame.get(5..7) else { return out };
    let count = i16::from_be_bytes([count[0], count[1]]).max(0) as usize;
    let mut pos = 7;
    for _ in 0..count {
        let Some(len) = frame.get(pos..pos + 4) else { break };
        let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
        pos += 4;
        if len < 0 {
            out.push(None);
        } else {
            let end = pos + len as usize;
            out.push(frame.get(pos..end));
            pos = end;
        }
    }
    out
}

/// A DataRow frame with only its first `visible` columns.
pub fn without_junk(frame: &[u8], visible: usize) -> BytesMut {
    let cols = columns(frame);
    let mut data = BytesMut::new();
    for col in cols.iter().take(visible) {
        match col {
            Some(v) => {
                data.extend_from_slice(&(v.len() as i32).to_be_bytes());
                data.extend_from_slice(v);
            }
            None => data.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    let mut out = BytesMut::new();
    encode(&mut out, DataRow::new(data, visible as i16));
    out
}

/// The fields of a RowDescription frame.
pub fn fields(frame: &[u8]) -> Result<Vec<FieldDescription>, SqlError> {
    let mut buf = BytesMut::from(frame);
    let Ok(Some(Message::RowDescription(body))) = Message::parse(&mut buf) else {
        return Err(SqlError::new(code::INTERNAL_ERROR, "a shard sent a malformed RowDescription"));
    };
    body.fields()
        .map(|f| {
            Ok(FieldDescription::new(
                f.name().to_string(),
                f.table_oid() as i32,
                f.column_id(),
                f.type_oid(),
                f.type_size(),
                f.type_modifier(),
                f.format(),
            ))
        })
        .collect()
        .map_err(|e| SqlError::new(code::INTERNAL_ERROR, e.to_string()))
}

/// The tag of a CommandComplete frame (`INSERT 0 3`), borrowed from it.
pub fn command_tag(frame: &[u8]) -> std::borrow::Cow<'_, str> {
    let body = frame.get(5..frame.len().saturating_sub(1)).unwrap_or_default();
    String::from_utf8_lossy(body)
}

/// A tag's verb and count: `UPDATE 7` → ("UPDATE", 7); `INSERT 0 3` → ("INSERT 0", 3).
pub fn tag_count(tag: &str) -> (&str, u64) {
    match tag.rsplit_once(' ') {
        Some((verb, n)) => match n.parse() {
            Ok(n) => (verb, n),
            Err(_) => (tag, 0),
        },
        None => (tag, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_gives_whole_messages_and_leaves_a_truncated_one_out() {
        let buf = [b'N', 0, 0, 0, 5, 1, b'E', 0, 0, 0, 4, b'Z', 0, 0];
        let frames: Vec<&[u8]> = split(&buf).collect();
        assert_eq!(frames, [&[b'N', 0, 0, 0, 5, 1][..], &[b'E', 0, 0, 0, 4][..]]);
    }

    #[test]
    fn data_rows_lose_their_junk_columns() {
        let mut data = BytesMut::new();
        for v in [Some(&b"1"[..]), None, Some(b"xyz")] {
            match v {
                Some(v) => {
                    data.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    data.extend_from_slice(v);
                }
                None => data.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        let mut row = BytesMut::new();
        encode(&mut row, DataRow::new(data, 3));
        assert_eq!(columns(&row), [Some(&b"1"[..]), None, Some(b"xyz")]);
        assert_eq!(columns(&without_junk(&row, 2)), [Some(&b"1"[..]), None]);
    }

    #[test]
    fn tags_split_into_verb_and_count() {
        assert_eq!(tag_count("INSERT 0 3"), ("INSERT 0", 3));
        assert_eq!(tag_count("UPDATE 7"), ("UPDATE", 7));
        assert_eq!(tag_count("CREATE TABLE"), ("CREATE TABLE", 0));
    }
}
