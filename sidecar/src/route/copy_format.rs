//! How the data of a COPY split by key is written: what the splitter
//! (`scatter::copy`) needs to cut it into rows and read each row's key.

/// How the data is written (from the COPY statement's options, and the key
/// column's type for binary).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    Text {
        delimiter: u8,
        /// The string that stands for NULL (`\N` unless `NULL '...'`).
        null: Vec<u8>,
        header: bool,
    },
    Csv(Csv),
    Binary {
        key: BinaryKey,
    },
}

/// The CSV format's options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Csv {
    pub delimiter: u8,
    pub quote: u8,
    pub escape: u8,
    /// The unquoted string that stands for NULL (empty unless `NULL '...'`).
    pub null: Vec<u8>,
    pub header: bool,
    /// `FORCE_NOT_NULL` / `FORCE_NULL` name the key column.
    pub key_force_not_null: bool,
    pub key_force_null: bool,
}

/// The key column's type, as the binary format sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryKey {
    Int2,
    Int4,
    Int8,
    /// text, varchar, bpchar, name: UTF-8 bytes.
    Text,
    Uuid,
}

impl BinaryKey {
    /// The binary format's reading of a column of type `name` (as
    /// `format_type` writes it), when shardcar can decode it.
    pub fn of_type(name: &str) -> Option<BinaryKey> {
        let base = name.split('(').next().unwrap_or(name).trim();
        Some(match base {
            "smallint" => BinaryKey::Int2,
            "integer" => BinaryKey::Int4,
            "bigint" => BinaryKey::Int8,
            "text" | "character varying" | "character" | "name" => BinaryKey::Text,
            "uuid" => BinaryKey::Uuid,
            _ => return None,
        })
    }
}
