//! Bind parameter values, read as routing needs them: text format as is,
//! binary format decoded for the types a shard key has (integers, text,
//! UUID, boolean).

use bytes::Bytes;

use super::Value;

/// Type OIDs (pg_type.dat).
mod oid {
    pub const BOOL: u32 = 16;
    pub const NAME: u32 = 19;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const TEXT: u32 = 25;
    pub const BPCHAR: u32 = 1042;
    pub const VARCHAR: u32 = 1043;
    pub const UUID: u32 = 2950;
    pub const UNKNOWN: u32 = 705;
}

/// The parameters of one Bind.
#[derive(Debug, Clone, Default)]
pub struct Params {
    pub values: Vec<Option<Bytes>>,
    /// Bind's format codes: none (all text), one (for all), or one each.
    pub formats: Vec<i16>,
    /// Declared types (from Parse, or from the server's ParameterDescription).
    pub types: Vec<u32>,
}

impl Params {
    pub fn format(&self, i: usize) -> i16 {
        match self.formats.as_slice() {
            [] => 0,
            [one] => *one,
            many => many.get(i).copied().unwrap_or(0),
        }
    }

    /// The value of parameter `i` (zero-based).
    pub fn value(&self, i: usize) -> Result<Value, String> {
        let Some(raw) = self.values.get(i) else {
            return Err(format!("parameter ${} is not bound", i + 1));
        };
        let Some(raw) = raw else { return Ok(Value::Null) };
        if self.format(i) == 0 {
            return String::from_utf8(raw.to_vec())
                .map(Value::Text)
                .map_err(|_| format!("parameter ${} is not valid UTF-8", i + 1));
        }
        let ty = self.types.get(i).copied().unwrap_or(0);
        let int = |n: usize| -> Result<i64, String> {
            (raw.len() == n)
                .then(|| raw.iter().fold(0i64, |acc, b| (acc << 8) | *b as i64))
                .map(|v| (v << (64 - 8 * n)) >> (64 - 8 * n))
                .ok_or_else(|| format!("parameter ${} has {} bytes for a {n}-byte integer", i + 1, raw.len()))
        };
        match ty {
            oid::INT8 => int(8).map(Value::Int),
            oid::INT4 => int(4).map(Value::Int),
            oid::INT2 => int(2).map(Value::Int),
            oid::TEXT | oid::VARCHAR | oid::BPCHAR | oid::NAME | oid::UNKNOWN => String::from_utf8(raw.to_vec())
                .map(Value::Text)
                .map_err(|_| format!("parameter ${} is not valid UTF-8", i + 1)),
            oid::UUID => uuid::Uuid::from_slice(raw)
                .map(|u| Value::Text(u.hyphenated().to_string()))
                .map_err(|_| format!("parameter ${} is not a 16-byte UUID", i + 1)),
            oid::BOOL => Ok(Value::Text((raw.first() == Some(&1)).to_string())),
            0 => {
                Err(format!("parameter ${} is binary and of unknown type, so shardcar cannot read it to route", i + 1))
            }
            other => Err(format!(
                "parameter ${} is binary of type OID {other}, which shardcar cannot read to route; send it as text",
                i + 1
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(values: Vec<&[u8]>, formats: Vec<i16>, types: Vec<u32>) -> Params {
        Params { values: values.into_iter().map(|v| Some(Bytes::copy_from_slice(v))).collect(), formats, types }
    }

    #[test]
    fn text_and_binary_integers_agree() {
        let p = params(vec![b"42", &42i64.to_be_bytes(), &(-3i32).to_be_bytes()], vec![0, 1, 1], vec![0, 20, 23]);
        assert_eq!(p.value(0), Ok(Value::Text("42".into())));
        assert_eq!(p.value(1), Ok(Value::Int(42)));
        assert_eq!(p.value(2), Ok(Value::Int(-3)));
        assert!(p.value(3).is_err());
    }

    #[test]
    fn binary_uuid_and_unknown_types() {
        let u = uuid::Uuid::parse_str("A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11").unwrap();
        let p = params(vec![u.as_bytes(), &[1, 2]], vec![1], vec![2950, 0]);
        assert_eq!(p.value(0), Ok(Value::Text("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into())));
        assert!(p.value(1).unwrap_err().contains("unknown type"));
    }
}
