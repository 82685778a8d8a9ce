//! The binary format: a header (signature, flags, extension area), then one
//! tuple per row — a 16-bit field count and, per field, a 32-bit length
//! (-1: NULL) and that many bytes in the type's send format — and a
//! trailer (a field count of -1). The header and trailer go to every shard;
//! the key field is decoded by the key column's type.

use super::{BinaryKey, Cut, Cutter, missing_key, utf8};

const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";
/// Signature, flags and the extension area's length.
const HEADER: usize = SIGNATURE.len() + 8;
/// Flag bit 16: the rows carry OIDs (refused since Postgres 12).
const WITH_OIDS: u32 = 1 << 16;

pub struct Binary {
    key: BinaryKey,
    header_done: bool,
}

impl Binary {
    pub fn new(key: BinaryKey) -> Binary {
        Binary { key, header_done: false }
    }

    fn header(&mut self, pending: &[u8]) -> Result<Cut, String> {
        let n = pending.len().min(SIGNATURE.len());
        if pending[..n] != SIGNATURE[..n] {
            return Err("COPY file signature not recognized".into());
        }
        if pending.len() < HEADER {
            return Ok(Cut::More);
        }
        let flags = u32::from_be_bytes(pending[11..15].try_into().expect("4 bytes"));
        if flags & WITH_OIDS != 0 {
            return Err("COPY with OIDs is not supported".into());
        }
        if flags & 0xFFFF_0000 != 0 {
            return Err("unrecognized critical flags in COPY file header".into());
        }
        let extension = u32::from_be_bytes(pending[15..19].try_into().expect("4 bytes")) as usize;
        if extension > i32::MAX as usize {
            return Err("invalid COPY file header (wrong length)".into());
        }
        if pending.len() < HEADER + extension {
            return Ok(Cut::More);
        }
        self.header_done = true;
        Ok(Cut::Everyone(HEADER + extension))
    }
}

/// The fields of a tuple at the start of `data`: each one's bytes (`None`:
/// NULL), and the tuple's length; `Ok(None)` when it has not all arrived.
type Fields<'a> = (Vec<Option<&'a [u8]>>, usize);

fn fields(data: &[u8]) -> Result<Option<Fields<'_>>, String> {
    let Some(count) = data.get(..2) else { return Ok(None) };
    let count = i16::from_be_bytes(count.try_into().expect("2 bytes"));
    if count < 0 {
        return Err(format!("row field count is {count}, expected a positive number"));
    }
    let mut at = 2;
    let mut out = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let Some(len) = data.get(at..at + 4) else { return Ok(None) };
        let len = i32::from_be_bytes(len.try_into().expect("4 bytes"));
        at += 4;
        match len {
            -1 => out.push(None),
            len if len < -1 => return Err("invalid field size".into()),
            len => {
                let Some(bytes) = data.get(at..at + len as usize) else { return Ok(None) };
                out.push(Some(bytes));
                at += len as usize;
            }
        }
    }
    Ok(Some((out, at)))
}

impl Cutter for Binary {
    fn cut(&mut self, pending: &[u8]) -> Result<Cut, String> {
        if !self.header_done {
            return self.header(pending);
        }
        if pending.get(..2) == Some(&[0xff, 0xff]) {
            return Ok(Cut::End(2));
        }
        Ok(match fields(pending)? {
            Some((_, len)) => Cut::Row(len),
            None => Cut::More,
        })
    }

    fn key(&self, row: &[u8], field: usize) -> Result<Option<String>, String> {
        let (fields, _) = fields(row)?.ok_or("a row cut short")?;
        let Some(value) = fields.get(field) else { return Err(missing_key(field, row)) };
        let Some(bytes) = value else { return Ok(None) };
        let int = |width: usize, name: &str| -> Result<i64, String> {
            if bytes.len() != width {
                return Err(format!("the shard key field has {} bytes, not the {width} of a {name}", bytes.len()));
            }
            let mut wide = [if bytes[0] & 0x80 != 0 { 0xff } else { 0 }; 8];
            wide[8 - width..].copy_from_slice(bytes);
            Ok(i64::from_be_bytes(wide))
        };
        Ok(Some(match self.key {
            BinaryKey::Int2 => int(2, "smallint")?.to_string(),
            BinaryKey::Int4 => int(4, "integer")?.to_string(),
            BinaryKey::Int8 => int(8, "bigint")?.to_string(),
            BinaryKey::Text => utf8(bytes.to_vec())?,
            BinaryKey::Uuid => {
                let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                if hex.len() != 32 {
                    return Err(format!("the shard key field has {} bytes, not the 16 of a uuid", bytes.len()));
                }
                format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
            }
        }))
    }

    fn last(&mut self, pending: &[u8]) -> Result<Option<Vec<u8>>, String> {
        match pending.is_empty() {
            // Postgres accepts data that ends without the trailer.
            true => Ok(None),
            false if !self.header_done => Err("the COPY data ends inside its binary header".into()),
            false => Err("unexpected EOF in COPY data".into()),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::tests::split;
    use super::super::{BinaryKey, Format};
    use super::SIGNATURE;

    /// A binary COPY stream of `rows` (fields as bytes, `None`: NULL).
    pub fn stream(rows: &[Vec<Option<Vec<u8>>>], extension: &[u8]) -> Vec<u8> {
        let mut out = SIGNATURE.to_vec();
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&(extension.len() as u32).to_be_bytes());
        out.extend_from_slice(extension);
        for row in rows {
            out.extend_from_slice(&(row.len() as i16).to_be_bytes());
            for field in row {
                match field {
                    None => out.extend_from_slice(&(-1i32).to_be_bytes()),
                    Some(bytes) => {
                        out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
                        out.extend_from_slice(bytes);
                    }
                }
            }
        }
        out.extend_from_slice(&(-1i16).to_be_bytes());
        out
    }

    #[test]
    fn tuples_are_cut_in_any_chunks_and_keys_decoded_by_type() {
        let rows = vec![
            vec![Some(b"note".to_vec()), Some(42i64.to_be_bytes().to_vec())],
            vec![Some(vec![0; 100_000]), Some((-7i64).to_be_bytes().to_vec())],
            vec![None, None],
        ];
        let data = stream(&rows, b"ext");
        for size in [1, 7, 4096, data.len()] {
            let chunks: Vec<&[u8]> = data.chunks(size).collect();
            let got = split(&Format::Binary { key: BinaryKey::Int8 }, 1, &chunks).unwrap();
            let keys: Vec<_> = got.iter().map(|r| r.1.clone()).collect();
            let every = Some("*".to_string());
            assert_eq!(keys, vec![every.clone(), Some("42".into()), Some("-7".into()), None, every], "{size}");
            assert_eq!(got[0].0.len(), 19 + 3, "the header with its extension area goes to every shard");
            assert_eq!(got.iter().map(|r| r.0.len()).sum::<usize>(), data.len(), "every byte, once");
        }
        let uuid = stream(&[vec![Some((0u8..16).collect())]], b"");
        let got = split(&Format::Binary { key: BinaryKey::Uuid }, 0, &[&uuid]).unwrap();
        assert_eq!(got[1].1.as_deref(), Some("00010203-0405-0607-0809-0a0b0c0d0e0f"));
        let small = stream(&[vec![Some((-2i16).to_be_bytes().to_vec())]], b"");
        assert_eq!(split(&Format::Binary { key: BinaryKey::Int2 }, 0, &[&small]).unwrap()[1].1.as_deref(), Some("-2"));
    }

    #[test]
    fn what_postgres_would_refuse_is_refused() {
        let good = stream(&[vec![Some(1i32.to_be_bytes().to_vec())]], b"");
        let int4 = Format::Binary { key: BinaryKey::Int4 };
        let mut after = good.clone();
        after.push(0);
        let mut oids = good.clone();
        oids[12] = 1; // flag bit 16
        let wide = stream(&[vec![Some(1i64.to_be_bytes().to_vec())]], b"");
        for (data, why) in [
            (&b"PGCOPX"[..], "signature"),
            (&after, "after EOF marker"),
            (&oids, "OIDs"),
            (&good[..good.len() - 3], "unexpected EOF"),
            (&wide, "not the 4 of a integer"),
            (&good[..10], "inside its binary header"),
        ] {
            let e = split(&int4, 0, &[data]).unwrap_err();
            assert!(e.contains(why), "{why}: {e}");
        }
        let e = split(&int4, 1, &[&good]).unwrap_err();
        assert!(e.contains("field 2"), "{e}");
    }
}
