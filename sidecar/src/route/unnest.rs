//! The bulk insert ORMs send, `INSERT ... SELECT ... FROM unnest($1, $2)`
//! with arrays bound: split by shard like a multi-row INSERT — each element
//! of the key's array routed as a row, each shard bound the elements of its
//! rows (every array cut the same way), its RETURNING rows given back in
//! the order of the elements.

use bytes::{Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::types::{ArrayDimension, array_from_sql, array_to_sql};

use crate::classify::Value;
use crate::classify::params::Params;

/// One bound array: its elements, and how to write a part of it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Array {
    pub elements: Vec<Option<Bytes>>,
    /// Binary: the element type's OID; `None`: text (`{a,b}`).
    binary: Option<u32>,
}

impl Array {
    /// Parameter `i` of `params`, read as a one-dimensional array.
    pub fn of(params: &Params, i: usize) -> Result<Array, String> {
        let n = i + 1;
        let Some(Some(raw)) = params.values.get(i) else { return Err(format!("parameter ${n} is not an array")) };
        if params.format(i) == 0 {
            let text = std::str::from_utf8(raw).map_err(|_| format!("parameter ${n} is not valid UTF-8"))?;
            let elements = parse_text(text).map_err(|e| format!("parameter ${n}: {e}"))?;
            return Ok(Array { elements: elements.into_iter().map(|e| e.map(Bytes::from)).collect(), binary: None });
        }
        let array = array_from_sql(raw).map_err(|e| format!("parameter ${n} is not a binary array: {e}"))?;
        let dimensions: Vec<ArrayDimension> =
            array.dimensions().collect().map_err(|e| format!("parameter ${n} is not a binary array: {e}"))?;
        if dimensions.len() > 1 {
            return Err(format!("parameter ${n} has {} dimensions; only one is split", dimensions.len()));
        }
        let elements = array
            .values()
            .map(|v| Ok(v.map(Bytes::copy_from_slice)))
            .collect()
            .map_err(|e| format!("parameter ${n} is not a binary array: {e}"))?;
        Ok(Array { elements, binary: Some(array.element_type()) })
    }

    /// Element `at` as routing reads a value: in its own type when binary.
    pub fn value(&self, at: usize) -> Result<Value, String> {
        let Some(Some(raw)) = self.elements.get(at) else { return Ok(Value::Null) };
        let one = match self.binary {
            None => Params { values: vec![Some(raw.clone())], ..Params::default() },
            Some(ty) => Params { values: vec![Some(raw.clone())], formats: vec![1], types: vec![ty] },
        };
        one.value(0).map_err(|e| format!("element {} of the key's array: {}", at + 1, e.replace("parameter $1", "it")))
    }

    /// The array of the elements at `picked`, written as it came.
    pub fn pick(&self, picked: &[usize]) -> Bytes {
        let chosen = picked.iter().map(|&i| self.elements.get(i).cloned().flatten());
        match self.binary {
            None => write_text(chosen),
            Some(ty) => {
                let mut out = BytesMut::new();
                let dims = [ArrayDimension { len: picked.len() as i32, lower_bound: 1 }];
                let written = array_to_sql(
                    dims,
                    ty,
                    chosen,
                    |e, buf| match e {
                        Some(v) => {
                            buf.extend_from_slice(&v);
                            Ok(postgres_protocol::IsNull::No)
                        }
                        None => Ok(postgres_protocol::IsNull::Yes),
                    },
                    &mut out,
                );
                // Only a length over i32 fails, and elements came from one message.
                debug_assert!(written.is_ok());
                out.freeze()
            }
        }
    }
}

/// The elements of a one-dimensional array literal as Postgres reads it
/// (`array_in`): `{a,"b c",NULL,"NULL"}`, backslash escapes, spaces around
/// unquoted elements dropped.
fn parse_text(text: &str) -> Result<Vec<Option<String>>, String> {
    let inner = text
        .trim()
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .ok_or("an array literal starts with { and ends with } (a one-dimensional one, without bounds)")?;
    let mut out = Vec::new();
    if inner.trim().is_empty() {
        return Ok(out);
    }
    let mut chars = inner.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut element = String::new();
        let mut quoted = false;
        if chars.next_if_eq(&'"').is_some() {
            quoted = true;
            loop {
                match chars.next() {
                    Some('"') => break,
                    Some('\\') => element.push(chars.next().ok_or("it ends inside an escape")?),
                    Some(c) => element.push(c),
                    None => return Err("a quoted element is not closed".into()),
                }
            }
            while chars.next_if(|c| c.is_whitespace()).is_some() {}
        } else {
            while let Some(c) = chars.next_if(|c| *c != ',') {
                match c {
                    '{' | '}' | '"' => return Err(format!("`{c}` inside an element: only one dimension is split")),
                    '\\' => element.push(chars.next().ok_or("it ends inside an escape")?),
                    c => element.push(c),
                }
            }
            element.truncate(element.trim_end().len());
        }
        out.push((quoted || !element.eq_ignore_ascii_case("null")).then_some(element));
        match chars.next() {
            Some(',') => {}
            None => return Ok(out),
            Some(c) => return Err(format!("`{c}` after an element")),
        }
    }
}

fn write_text(elements: impl Iterator<Item = Option<Bytes>>) -> Bytes {
    let mut out = String::from("{");
    for (i, e) in elements.enumerate() {
        if i > 0 {
            out.push(',');
        }
        match e {
            None => out.push_str("NULL"),
            Some(v) => {
                out.push('"');
                for c in String::from_utf8_lossy(&v).chars() {
                    if c == '"' || c == '\\' {
                        out.push('\\');
                    }
                    out.push(c);
                }
                out.push('"');
            }
        }
    }
    out.push('}');
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(elements: &[Option<&str>]) -> Vec<Option<String>> {
        elements.iter().map(|e| e.map(str::to_string)).collect()
    }

    #[test]
    fn text_arrays_read_as_postgres_reads_them() {
        assert_eq!(parse_text("{1,2,3}").unwrap(), text(&[Some("1"), Some("2"), Some("3")]));
        assert_eq!(parse_text(" { } ").unwrap(), text(&[]));
        let odd = r#"{ a b , "c,\"d\"" ,NULL,"NULL",e\,f, null }"#;
        assert_eq!(
            parse_text(odd).unwrap(),
            text(&[Some("a b"), Some("c,\"d\""), None, Some("NULL"), Some("e,f"), None])
        );
        for bad in ["1,2", "{{1,2},{3,4}}", "{\"a}", "[1:2]={1,2}", "{a\"b}"] {
            assert!(parse_text(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_part_is_written_back_in_the_same_format() {
        let params =
            Params { values: vec![Some(Bytes::from_static(br#"{"x","y \"z\"",NULL,w}"#))], ..Params::default() };
        let array = Array::of(&params, 0).unwrap();
        let part = array.pick(&[1, 2]);
        assert_eq!(&part[..], br#"{"y \"z\"",NULL}"#);
        assert_eq!(Array::of(&Params { values: vec![Some(part)], ..Params::default() }, 0).unwrap().elements.len(), 2);

        let mut binary = BytesMut::new();
        let dims = [ArrayDimension { len: 3, lower_bound: 1 }];
        let ints = [Some(7i64), None, Some(-3)];
        array_to_sql(
            dims,
            20,
            ints.iter(),
            |v, buf| match v {
                Some(n) => {
                    buf.extend_from_slice(&n.to_be_bytes());
                    Ok(postgres_protocol::IsNull::No)
                }
                None => Ok(postgres_protocol::IsNull::Yes),
            },
            &mut binary,
        )
        .unwrap();
        let params = Params { values: vec![Some(binary.freeze())], formats: vec![1], types: vec![1016] };
        let array = Array::of(&params, 0).unwrap();
        assert_eq!(array.value(0).unwrap(), Value::Int(7));
        assert_eq!(array.value(1).unwrap(), Value::Null);
        let part = Array::of(&Params { values: vec![Some(array.pick(&[2, 0]))], ..params }, 0).unwrap();
        assert_eq!((part.value(0).unwrap(), part.value(1).unwrap()), (Value::Int(-3), Value::Int(7)));
    }
}
