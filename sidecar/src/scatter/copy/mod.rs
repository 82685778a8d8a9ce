//! Cutting the data of `COPY ... FROM STDIN` into rows, to send each row to
//! the shard its key routes to: the text, CSV and binary formats, arriving
//! in chunks cut anywhere.
//!
//! Rows are passed on byte for byte; only the key field is decoded. Where
//! a row ends follows Postgres's own reading of each format exactly (a
//! shard must see the same rows the client meant); input that Postgres
//! would refuse, or that shardcar cannot cut the way Postgres would, is an
//! error here, before any row of it is placed.

mod binary;
mod csv;
mod text;

pub use crate::route::copy_format::{BinaryKey, Csv as CsvOptions, Format};
use crate::sqlerror::{SqlError, code};

/// What the data holds, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    /// One row: its bytes (with its line end) and its key (`None`: NULL).
    Row { bytes: &'a [u8], key: Option<String> },
    /// Bytes every shard gets: a header line, the binary header and trailer.
    Everyone(&'a [u8]),
}

/// Where the next row ends, as far as the data so far tells.
enum Cut {
    /// Not known yet: more data is needed.
    More,
    /// A row of this many bytes.
    Row(usize),
    /// This many bytes for every shard.
    Everyone(usize),
    /// The end of the data (after this many bytes of end marker): what
    /// follows is not read (text, CSV) or is an error (binary).
    End(usize),
}

/// Finds where rows end, resuming where the last call stopped: a row that
/// arrives in many chunks is scanned once.
trait Cutter {
    fn cut(&mut self, pending: &[u8]) -> Result<Cut, String>;
    /// The key of a complete row.
    fn key(&self, row: &[u8], field: usize) -> Result<Option<String>, String>;
    /// The data ended with `pending` not cut: the last row (text and CSV
    /// rows need no line end at the very end), or an error.
    fn last(&mut self, pending: &[u8]) -> Result<Option<Vec<u8>>, String>;
}

/// Cuts a COPY stream into [`Piece`]s.
pub struct RowSplitter {
    cutter: Box<dyn Cutter + Send>,
    key_field: usize,
    /// Data not cut into rows yet, from `start` on.
    buf: Vec<u8>,
    start: usize,
    ended: bool,
    /// Binary data after the trailer is an error, as in Postgres.
    strict_end: bool,
    /// The next line is a header (`HEADER`): every shard gets it.
    header_pending: bool,
    max_row: usize,
}

impl RowSplitter {
    /// `key_field`: zero-based; `max_row`: the longest row kept while it arrives.
    pub fn new(format: &Format, key_field: usize, max_row: usize) -> RowSplitter {
        let (cutter, strict_end): (Box<dyn Cutter + Send>, bool) = match format {
            Format::Text { delimiter, null, .. } => (Box::new(text::Text::new(*delimiter, null.clone())), false),
            Format::Csv(options) => (Box::new(csv::Csv::new(options.clone())), false),
            Format::Binary { key } => (Box::new(binary::Binary::new(*key)), true),
        };
        let header_pending =
            matches!(format, Format::Text { header: true, .. } | Format::Csv(CsvOptions { header: true, .. }));
        RowSplitter { cutter, key_field, buf: Vec::new(), start: 0, ended: false, strict_end, header_pending, max_row }
    }

    /// Feeds `data`; `piece` gets each piece completed by it, in order.
    pub fn push(
        &mut self,
        data: &[u8],
        mut piece: impl FnMut(Piece<'_>) -> Result<(), SqlError>,
    ) -> Result<(), SqlError> {
        if self.ended {
            if self.strict_end && !data.is_empty() {
                return Err(bad("received copy data after EOF marker".into()));
            }
            return Ok(());
        }
        self.buf.extend_from_slice(data);
        while !self.ended {
            let pending = &self.buf[self.start..];
            match self.cutter.cut(pending).map_err(bad)? {
                Cut::More => break,
                Cut::Row(n) if std::mem::take(&mut self.header_pending) => {
                    piece(Piece::Everyone(&pending[..n]))?;
                    self.start += n;
                }
                Cut::Row(n) => {
                    let bytes = &pending[..n];
                    let key = self.cutter.key(bytes, self.key_field).map_err(bad)?;
                    piece(Piece::Row { bytes, key })?;
                    self.start += n;
                }
                Cut::Everyone(n) => {
                    piece(Piece::Everyone(&pending[..n]))?;
                    self.start += n;
                }
                Cut::End(n) => {
                    if self.strict_end {
                        piece(Piece::Everyone(&pending[..n]))?;
                        if pending.len() > n {
                            return Err(bad("received copy data after EOF marker".into()));
                        }
                    }
                    self.ended = true;
                    self.start += n;
                }
            }
        }
        self.buf.drain(..self.start);
        self.start = 0;
        if self.ended {
            self.buf = Vec::new();
        } else if self.buf.len() > self.max_row {
            return Err(SqlError::new(
                code::PROGRAM_LIMIT_EXCEEDED,
                format!("a COPY row is longer than {} bytes (listen.max_message_bytes)", self.max_row),
            ));
        }
        Ok(())
    }

    /// The end of the data.
    pub fn finish(&mut self, mut piece: impl FnMut(Piece<'_>) -> Result<(), SqlError>) -> Result<(), SqlError> {
        if self.ended {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.buf);
        self.ended = true;
        if self.header_pending {
            // A header alone, without its line end: no rows, nothing for the shards.
            return Ok(());
        }
        if let Some(row) = self.cutter.last(&pending).map_err(bad)? {
            let key = self.cutter.key(&row, self.key_field).map_err(bad)?;
            piece(Piece::Row { bytes: &row, key })?;
        }
        Ok(())
    }
}

fn bad(why: String) -> SqlError {
    SqlError::new(code::BAD_COPY_FILE_FORMAT, format!("cannot place a COPY row on a shard: {why}"))
}

/// A row's first bytes, for messages.
fn shown(row: &[u8]) -> String {
    String::from_utf8_lossy(&row[..row.len().min(80)]).into_owned()
}

/// Where the row ends when the byte at `i` of `pending` is a newline or a
/// carriage return outside any escape or quote: a `\n` or `\r\n` line end
/// ends it; a bare `\r` (Postgres reads such files only when every line
/// ends so; shardcar refuses them) is the error `bare_cr`.
fn line_end(pending: &[u8], i: usize, bare_cr: &str) -> Result<Option<Cut>, String> {
    match (pending[i], pending.get(i + 1)) {
        (b'\n', _) => Ok(Some(Cut::Row(i + 1))),
        (b'\r', Some(b'\n')) => Ok(Some(Cut::Row(i + 2))),
        // The next chunk says.
        (b'\r', None) => Ok(Some(Cut::More)),
        (b'\r', Some(_)) => Err(bare_cr.into()),
        _ => Ok(None),
    }
}

/// A row without its line end.
fn content(row: &[u8]) -> &[u8] {
    let row = row.strip_suffix(b"\n").unwrap_or(row);
    row.strip_suffix(b"\r").unwrap_or(row)
}

/// The message for a row without the key field.
fn missing_key(field: usize, row: &[u8]) -> String {
    format!("missing data for the shard key column (field {}) in COPY row \"{}\"", field + 1, shown(row))
}

/// A value's bytes as the key: UTF-8, as shardcar's clients send it.
fn utf8(bytes: Vec<u8>) -> Result<String, String> {
    String::from_utf8(bytes).map_err(|_| "the shard key is not valid UTF-8".to_string())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Each piece's bytes and key (`*`: for every shard).
    pub type Split = Vec<(Vec<u8>, Option<String>)>;

    /// The rows and keys of `chunks`, or the error.
    pub fn split(format: &Format, key_field: usize, chunks: &[&[u8]]) -> Result<Split, String> {
        let mut s = RowSplitter::new(format, key_field, 1 << 20);
        let mut rows = Vec::new();
        let mut keep = |p: Piece<'_>| {
            match p {
                Piece::Row { bytes, key } => rows.push((bytes.to_vec(), key)),
                Piece::Everyone(bytes) => rows.push((bytes.to_vec(), Some("*".into()))),
            }
            Ok(())
        };
        for c in chunks {
            s.push(c, &mut keep).map_err(|e| e.message)?;
        }
        s.finish(&mut keep).map_err(|e| e.message)?;
        Ok(rows)
    }

    #[test]
    fn a_row_longer_than_the_limit_is_refused_while_it_arrives() {
        let mut s = RowSplitter::new(&Format::Text { delimiter: b'\t', null: b"\\N".to_vec(), header: false }, 0, 16);
        let e = s.push(&[b'x'; 20], |_| Ok(())).unwrap_err();
        assert_eq!(e.code, "54000");
    }
}
