//! The text format: a row ends at a newline byte that no backslash escapes
//! (a newline inside a value is written `\n`), fields are split by the
//! delimiter (escaped inside a value), the NULL string (`\N`) stands for
//! NULL, and `\.` on a line of its own ends the data. Carriage returns
//! must be escaped, except in `\r\n` line ends (Postgres also reads files
//! whose lines end in a bare `\r`; shardcar refuses those).

use std::ops::Range;

use super::{Cut, Cutter, content, line_end, missing_key, utf8};

pub struct Text {
    delimiter: u8,
    null: Vec<u8>,
    /// Where scanning the pending row resumes, and whether the byte before
    /// it was a backslash that escapes the next one.
    pos: usize,
    escaped: bool,
}

impl Text {
    pub fn new(delimiter: u8, null: Vec<u8>) -> Text {
        Text { delimiter, null, pos: 0, escaped: false }
    }
}

impl Cutter for Text {
    fn cut(&mut self, pending: &[u8]) -> Result<Cut, String> {
        let mut i = self.pos;
        while i < pending.len() {
            let b = pending[i];
            if std::mem::take(&mut self.escaped) {
                if b == b'.' {
                    if i != 1 {
                        return Err("an end-of-copy marker (\\.) in the middle of a row".into());
                    }
                    return match (pending.get(2), pending.get(3)) {
                        (Some(b'\n'), _) => Ok(Cut::End(3)),
                        (Some(b'\r'), Some(b'\n')) => Ok(Cut::End(4)),
                        (None, _) | (Some(b'\r'), None) => {
                            // The end marker's line end has not all arrived: look again.
                            self.pos = 0;
                            Ok(Cut::More)
                        }
                        _ => Err("end-of-copy marker corrupt".into()),
                    };
                }
                // Any other byte after a backslash is data, a newline too.
                i += 1;
                continue;
            }
            if b == b'\\' {
                self.escaped = true;
            } else if let Some(cut) = line_end(pending, i, "a carriage return in COPY data (write it as \\r)")? {
                // A row is done (scanning starts over), or `\r` waits for the next chunk.
                self.pos = if matches!(cut, Cut::More) { i } else { 0 };
                return Ok(cut);
            }
            i += 1;
        }
        self.pos = i;
        Ok(Cut::More)
    }

    fn key(&self, row: &[u8], field: usize) -> Result<Option<String>, String> {
        let content = content(row);
        let range = field_range(content, self.delimiter, field).ok_or_else(|| missing_key(field, content))?;
        let raw = &content[range];
        // The NULL string is compared before escapes are undone, as Postgres does.
        if raw == self.null.as_slice() {
            return Ok(None);
        }
        utf8(decode(raw)).map(Some)
    }

    fn last(&mut self, pending: &[u8]) -> Result<Option<Vec<u8>>, String> {
        if pending.is_empty() || matches!(pending, b"\\." | b"\\.\r") {
            return Ok(None);
        }
        if self.escaped {
            return Err("the COPY data ends in a backslash".into());
        }
        // A last row without its newline is still a row; the shard gets one.
        let mut row = pending.to_vec();
        row.push(b'\n');
        Ok(Some(row))
    }
}

/// The byte range of field `n` of a row, honouring backslash escapes.
fn field_range(row: &[u8], delimiter: u8, n: usize) -> Option<Range<usize>> {
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

/// A text-format value with its backslash escapes undone.
fn decode(raw: &[u8]) -> Vec<u8> {
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
    out
}

#[cfg(test)]
mod tests {
    use super::super::Format;
    use super::super::tests::split;

    fn text() -> Format {
        Format::Text { delimiter: b'\t', null: b"\\N".to_vec(), header: false }
    }

    fn keys(rows: &[(Vec<u8>, Option<String>)]) -> Vec<Option<String>> {
        rows.iter().map(|r| r.1.clone()).collect()
    }

    #[test]
    fn rows_split_across_chunks_keep_their_bytes_and_keys() {
        let rows = split(&text(), 0, &[b"1\ta\n2\t", b"b\\tc\n\\N\tz\n3\tlast"]).unwrap();
        assert_eq!(keys(&rows), vec![Some("1".into()), Some("2".into()), None, Some("3".into())]);
        assert_eq!(rows[1].0, b"2\tb\\tc\n", "bytes are passed on unchanged");
        assert_eq!(rows[3].0, b"3\tlast\n", "a last row without newline gets one");
    }

    #[test]
    fn escapes_in_the_key_are_decoded_and_the_end_marker_stops() {
        let rows = split(&text(), 1, &[b"x\ta\\tb\\\\c\\101\\x41\ny\tk\\\tk\n\\.\nignored\tafter\n"]).unwrap();
        let keys: Vec<_> = rows.iter().map(|r| r.1.clone().unwrap()).collect();
        assert_eq!(keys, vec!["a\tb\\cAA".to_string(), "k\tk".to_string()]);
    }

    #[test]
    fn an_escaped_newline_does_not_end_the_row_as_in_postgres() {
        // Postgres reads `1<TAB>foo\<LF>2<TAB>bar` as one row of three fields.
        let rows = split(&text(), 0, &[b"1\tfoo\\", b"\n2\tbar\n3\tx\n"]).unwrap();
        assert_eq!(keys(&rows), vec![Some("1".into()), Some("3".into())]);
        assert_eq!(rows[0].0, b"1\tfoo\\\n2\tbar\n");
    }

    #[test]
    fn crlf_line_ends_the_null_string_and_a_header() {
        let format = Format::Text { delimiter: b',', null: b"NA".to_vec(), header: true };
        let rows = split(&format, 0, &[b"id,v\r", b"\nNA,1\r\n\\N,2\r", b"\n\\.\r\n"]).unwrap();
        assert_eq!(rows[0], (b"id,v\r\n".to_vec(), Some("*".into())), "the header goes to every shard");
        assert_eq!(keys(&rows[1..]), vec![None, Some("N".into())], "only the NULL string is NULL");
    }

    #[test]
    fn what_postgres_would_refuse_is_refused() {
        for (data, why) in [
            (&b"1\ta\n2\n"[..], "field 2"),
            (b"1\ta\rb\n", "carriage return"),
            (b"1\ta\\.\n", "middle of a row"),
            (b"\\.x\n", "corrupt"),
            (b"1\ta\\", "ends in a backslash"),
            (b"1\t\xff\n", "UTF-8"),
        ] {
            let e = split(&text(), 1, &[data]).unwrap_err();
            assert!(e.contains(why), "{data:?}: {e}");
        }
    }
}
