//! Splitting the rows of `COPY ... FROM STDIN` (text format) by shard key.
//!
//! In the text format a row ends at a newline byte (a newline inside a
//! value is written `\n`), fields are split by the delimiter (a delimiter
//! inside a value is escaped with a backslash), `\N` is NULL and `\.` on a
//! line of its own ends the data. Rows are passed on byte for byte; only the
//! key field is decoded, to route the row.

use std::ops::Range;

/// Cuts a COPY text stream, arriving in arbitrary chunks, into rows.
pub struct RowSplitter {
    delimiter: u8,
    key_field: usize,
    /// The start of a row whose end has not arrived yet.
    carry: Vec<u8>,
    ended: bool,
}

/// One complete row: its bytes (with the newline) and its key (`None`: NULL).
pub struct Row<'a> {
    pub bytes: &'a [u8],
    pub key: Option<String>,
}

impl RowSplitter {
    pub fn new(delimiter: u8, key_field: usize) -> RowSplitter {
        RowSplitter { delimiter, key_field, carry: Vec::new(), ended: false }
    }

    /// Feeds `data`; `row` gets each row completed by it, in order. A row
    /// without enough fields is an error naming it.
    pub fn push(&mut self, data: &[u8], mut row: impl FnMut(Row<'_>) -> Result<(), String>) -> Result<(), String> {
        let mut start = 0;
        while !self.ended {
            let Some(nl) = data[start..].iter().position(|&b| b == b'\n') else { break };
            let end = start + nl + 1;
            if self.carry.is_empty() {
                self.emit(&data[start..end], &mut row)?;
            } else {
                let mut whole = std::mem::take(&mut self.carry);
                whole.extend_from_slice(&data[start..end]);
                self.emit(&whole, &mut row)?;
            }
            start = end;
        }
        if !self.ended {
            self.carry.extend_from_slice(&data[start..]);
        }
        Ok(())
    }

    /// The end of the data: a last row without a newline is still a row.
    pub fn finish(&mut self, mut row: impl FnMut(Row<'_>) -> Result<(), String>) -> Result<(), String> {
        if self.ended || self.carry.is_empty() {
            return Ok(());
        }
        let mut last = std::mem::take(&mut self.carry);
        last.push(b'\n');
        self.emit(&last, &mut row)
    }

    fn emit(&mut self, line: &[u8], row: &mut impl FnMut(Row<'_>) -> Result<(), String>) -> Result<(), String> {
        let content = line.strip_suffix(b"\n").unwrap_or(line);
        let content = content.strip_suffix(b"\r").unwrap_or(content);
        if content == b"\\." {
            self.ended = true;
            return Ok(());
        }
        let Some(range) = field(content, self.delimiter, self.key_field) else {
            let shown = String::from_utf8_lossy(&content[..content.len().min(80)]).into_owned();
            return Err(format!(
                "missing data for the shard key column (field {}) in COPY row \"{shown}\"",
                self.key_field + 1
            ));
        };
        let key = decode(&content[range]);
        row(Row { bytes: line, key })
    }
}

/// The byte range of field `n` of a row, honouring backslash escapes.
fn field(row: &[u8], delimiter: u8, n: usize) -> Option<Range<usize>> {
    let (mut index, mut start, mut i) = (0, 0, 0);
    while i < row.len() {
        match row[i] {
            b'\\' => i += 1,
            b if b == delimiter => {
                if index == n {
                    return Some(start..i);
                }
                index += 1;
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    (index == n).then_some(start..row.len())
}

/// A text-format value: `\N` is NULL; backslash escapes are undone.
fn decode(raw: &[u8]) -> Option<String> {
    if raw == b"\\N" {
        return None;
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] != b'\\' || i + 1 == raw.len() {
            out.push(raw[i]);
            i += 1;
            continue;
        }
        let c = raw[i + 1];
        i += 2;
        match c {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut v = u32::from(c - b'0');
                for _ in 0..2 {
                    match raw.get(i) {
                        Some(&d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push(v as u8);
            }
            b'x' if raw.get(i).is_some_and(u8::is_ascii_hexdigit) => {
                let mut v = 0u32;
                for _ in 0..2 {
                    match raw.get(i).and_then(|d| (*d as char).to_digit(16)) {
                        Some(d) => {
                            v = v * 16 + d;
                            i += 1;
                        }
                        None => break,
                    }
                }
                out.push(v as u8);
            }
            other => out.push(other),
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]], key_field: usize) -> Result<Vec<(String, Option<String>)>, String> {
        let mut s = RowSplitter::new(b'\t', key_field);
        let mut rows = Vec::new();
        for c in chunks {
            s.push(c, |r| {
                rows.push((String::from_utf8_lossy(r.bytes).into_owned(), r.key));
                Ok(())
            })?;
        }
        s.finish(|r| {
            rows.push((String::from_utf8_lossy(r.bytes).into_owned(), r.key));
            Ok(())
        })?;
        Ok(rows)
    }

    #[test]
    fn rows_split_across_chunks_keep_their_bytes_and_keys() {
        let rows = split(&[b"1\ta\n2\t", b"b\\tc\n\\N\tz\n3\tlast"], 0).unwrap();
        let keys: Vec<_> = rows.iter().map(|r| r.1.clone()).collect();
        assert_eq!(keys, vec![Some("1".into()), Some("2".into()), None, Some("3".into())]);
        assert_eq!(rows[1].0, "2\tb\\tc\n", "bytes are passed on unchanged");
        assert_eq!(rows[3].0, "3\tlast\n", "a last row without newline gets one");
    }

    #[test]
    fn escapes_in_the_key_are_decoded_and_the_end_marker_stops() {
        let rows = split(&[b"x\ta\\tb\\\\c\\101\\x41\ny\tk\\\tk\n\\.\nignored\tafter\n"], 1).unwrap();
        let keys: Vec<_> = rows.iter().map(|r| r.1.clone().unwrap()).collect();
        assert_eq!(keys, vec!["a\tb\\cAA".to_string(), "k\tk".to_string()]);
    }

    #[test]
    fn a_row_without_the_key_field_is_an_error() {
        let err = split(&[b"1\ta\n2\n"], 1).unwrap_err();
        assert!(err.contains("field 2") && err.contains("\"2\""), "{err}");
    }
}
