//! The CSV format as Postgres reads it: a row ends at a newline outside
//! quotes (newlines and delimiters inside quotes are data), a quote inside
//! a quoted value is doubled (or preceded by the ESCAPE character), an
//! unquoted value equal to the NULL string (empty by default) is NULL, and
//! `\.` alone on a line ends the data. Carriage returns outside quotes are
//! accepted only in `\r\n` line ends (Postgres also reads files whose lines
//! end in a bare `\r`; shardcar refuses those).

use super::{CsvOptions, Cut, Cutter, content, line_end, missing_key, utf8};

pub struct Csv {
    o: CsvOptions,
    /// Where scanning the pending row resumes, and the quoting state there.
    pos: usize,
    in_quote: bool,
    last_was_escape: bool,
}

impl Csv {
    pub fn new(options: CsvOptions) -> Csv {
        Csv { o: options, pos: 0, in_quote: false, last_was_escape: false }
    }
}

impl Cutter for Csv {
    fn cut(&mut self, pending: &[u8]) -> Result<Cut, String> {
        // Finding line ends, an escape equal to the quote is only a quote.
        let escape = (self.o.escape != self.o.quote).then_some(self.o.escape);
        if self.pos == 0 && pending.first() == Some(&b'\\') {
            match (pending.get(1), pending.get(2), pending.get(3)) {
                (Some(b'.'), Some(b'\n'), _) => return Ok(Cut::End(3)),
                (Some(b'.'), Some(b'\r'), Some(b'\n')) => return Ok(Cut::End(4)),
                (None, ..) | (Some(b'.'), None, _) | (Some(b'.'), Some(b'\r'), None) => return Ok(Cut::More),
                // Otherwise `\` is data, as any other byte.
                _ => {}
            }
        }
        let mut i = self.pos;
        while i < pending.len() {
            let c = pending[i];
            if self.in_quote && Some(c) == escape {
                self.last_was_escape = !self.last_was_escape;
            }
            if c == self.o.quote && !self.last_was_escape {
                self.in_quote = !self.in_quote;
            }
            if Some(c) != escape {
                self.last_was_escape = false;
            }
            if !self.in_quote
                && let Some(cut) = line_end(pending, i, "an unquoted carriage return in CSV data (quote the value)")?
            {
                // A row is done (outside quotes: scanning starts over), or `\r` waits for the next chunk.
                self.pos = if matches!(cut, Cut::More) { i } else { 0 };
                return Ok(cut);
            }
            i += 1;
        }
        self.pos = i;
        Ok(Cut::More)
    }

    fn key(&self, row: &[u8], field: usize) -> Result<Option<String>, String> {
        let (raw, value, quoted) = self.field(content(row), field)?;
        let null = !quoted && raw == self.o.null.as_slice();
        let value = match (null, self.o.key_force_not_null, self.o.key_force_null) {
            (true, true, _) => Some(self.o.null.clone()),
            (true, false, _) => None,
            (false, _, true) if value == self.o.null => None,
            (false, _, _) => Some(value),
        };
        value.map(utf8).transpose()
    }

    fn last(&mut self, pending: &[u8]) -> Result<Option<Vec<u8>>, String> {
        if pending.is_empty() || matches!(pending, b"\\." | b"\\.\r") {
            return Ok(None);
        }
        if self.in_quote {
            return Err("unterminated CSV quoted field".into());
        }
        let mut row = pending.to_vec();
        row.push(b'\n');
        Ok(Some(row))
    }
}

impl Csv {
    /// Field `n` of a row: its raw bytes, its value (quotes undone), and
    /// whether any of it was quoted.
    fn field<'a>(&self, row: &'a [u8], n: usize) -> Result<(&'a [u8], Vec<u8>, bool), String> {
        let mut i = 0;
        for index in 0.. {
            let start = i;
            let mut value = Vec::new();
            let mut quoted = false;
            let mut delimited = false;
            while i < row.len() {
                let c = row[i];
                i += 1;
                if c == self.o.delimiter {
                    delimited = true;
                    break;
                }
                if c != self.o.quote {
                    value.push(c);
                    continue;
                }
                quoted = true;
                loop {
                    let Some(&c) = row.get(i) else { return Err("unterminated CSV quoted field".into()) };
                    i += 1;
                    if c == self.o.escape
                        && row.get(i).is_some_and(|&next| next == self.o.escape || next == self.o.quote)
                    {
                        value.push(row[i]);
                        i += 1;
                        continue;
                    }
                    if c == self.o.quote {
                        break;
                    }
                    value.push(c);
                }
            }
            if index == n {
                let end = if delimited { i - 1 } else { i };
                return Ok((&row[start..end], value, quoted));
            }
            if !delimited {
                break;
            }
        }
        Err(missing_key(n, row))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::split;
    use super::super::{CsvOptions, Format};

    fn csv(header: bool) -> Format {
        Format::Csv(CsvOptions {
            delimiter: b',',
            quote: b'"',
            escape: b'"',
            null: Vec::new(),
            header,
            key_force_not_null: false,
            key_force_null: false,
        })
    }

    fn keys(rows: &[(Vec<u8>, Option<String>)]) -> Vec<Option<String>> {
        rows.iter().map(|r| r.1.clone()).collect()
    }

    #[test]
    fn quoted_newlines_delimiters_and_doubled_quotes_stay_in_their_row() {
        let data: &[&[u8]] = &[b"id,note\n\"a,\"\"b\"\"\",\"line\n", b"two\"\r\n,empty key\n\"\",quoted empty\nz,last"];
        let rows = split(&csv(true), 0, data).unwrap();
        assert_eq!(rows[0], (b"id,note\n".to_vec(), Some("*".into())), "the header goes to every shard");
        assert_eq!(keys(&rows[1..]), vec![Some("a,\"b\"".into()), None, Some(String::new()), Some("z".into())]);
        assert_eq!(rows[1].0, b"\"a,\"\"b\"\"\",\"line\ntwo\"\r\n", "bytes are passed on unchanged");
        assert_eq!(rows[4].0, b"z,last\n");
    }

    #[test]
    fn another_escape_character_the_null_string_and_forced_nulls() {
        let format = Format::Csv(CsvOptions {
            delimiter: b';',
            quote: b'\'',
            escape: b'\\',
            null: b"NULL".to_vec(),
            header: false,
            key_force_not_null: false,
            key_force_null: false,
        });
        let rows = split(&format, 1, &[b"1;'it\\'s';x\n2;NULL\n3;'NULL'\n4;'a\\\\b'\n"]).unwrap();
        assert_eq!(keys(&rows), vec![Some("it's".into()), None, Some("NULL".into()), Some("a\\b".into())]);
        let forced = |not_null, null| {
            Format::Csv(CsvOptions {
                delimiter: b',',
                quote: b'"',
                escape: b'"',
                null: Vec::new(),
                header: false,
                key_force_not_null: not_null,
                key_force_null: null,
            })
        };
        assert_eq!(keys(&split(&forced(true, false), 0, &[b",x\n"]).unwrap()), vec![Some(String::new())]);
        assert_eq!(keys(&split(&forced(false, true), 0, &[b"\"\",x\n"]).unwrap()), vec![None]);
    }

    #[test]
    fn the_end_marker_only_alone_on_a_line() {
        let rows = split(&csv(false), 0, &[b"\\.x,1\n\\", b".\r\nnot read\n"]).unwrap();
        assert_eq!(keys(&rows), vec![Some("\\.x".into())]);
    }

    #[test]
    fn what_postgres_would_refuse_is_refused() {
        for (data, why) in
            [(&b"\"open\n"[..], "unterminated"), (b"a\rb\n", "carriage return"), (b"onlyone\n", "field 2")]
        {
            let e = split(&csv(false), 1, &[data]).unwrap_err();
            assert!(e.contains(why), "{data:?}: {e}");
        }
    }
}
